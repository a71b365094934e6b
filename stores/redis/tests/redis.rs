//! What the shared suite cannot see from outside the trait: native expiry, number limits that
//! Lua's doubles would get wrong, script reloading, prefixes, databases and connection errors.
//! Against the Redis server on loopback (`ONCELY_TEST_REDIS` overrides).

mod support;

use std::net::TcpListener;
use std::time::Duration;

use oncely_conformance::servers;
use oncely_core::{
    ClaimOutcome, ClaimRequest, Error, Key, LostReason, Scope, Store, Timestamp, VersionCheck,
};
use oncely_redis::{DEFAULT_TTL_GRACE, RedisStore};

/// This binary's key prefixes start with it.
const PREFIX: &str = "oncely_redis";

async fn open(url: &str) -> RedisStore {
    RedisStore::connect(url)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A store under a fresh key prefix, with these further URL parameters (`&name=value...`);
/// the prefix too.
async fn open_fresh(params: &str) -> (String, RedisStore) {
    let prefix = servers::redis_prefix(PREFIX).await;
    let url = support::with_param(&servers::redis(), &format!("prefix={prefix}{params}"));
    (prefix, open(&url).await)
}

/// A direct connection, to look at what the store wrote.
async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(servers::redis().as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis at {}: {e}", servers::redis()))
}

fn request(scope: &str, key: &str, lease: Duration) -> ClaimRequest {
    ClaimRequest::new(
        Scope::new(scope).unwrap(),
        Key::new(key).unwrap(),
        None,
        lease,
    )
}

fn record_key(prefix: &str, scope: &str, key: &str) -> String {
    format!("{prefix}:{{{scope}}}:r:{key}")
}

async fn pttl(key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut raw().await)
        .await
        .unwrap()
}

#[tokio::test]
async fn unreachable_server_is_unavailable_with_a_hint_and_no_password() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The listener is dropped: nothing listens on the port any more.
    let err = RedisStore::connect(&format!("redis://app:s3cret@127.0.0.1:{port}/0"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(
        text.contains("(is Redis running? see README \"Stores\")"),
        "{text}"
    );
    assert!(
        !text.contains("s3cret") && text.contains("app:***@"),
        "{text}"
    );

    let err = RedisStore::connect(&format!("redis+cluster://127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("is Redis running?"), "{err}");
}

#[tokio::test]
async fn native_expiry_is_relative_to_the_callers_clock_plus_grace() {
    let (prefix, store) = open_fresh("").await;
    let grace = DEFAULT_TTL_GRACE.as_millis() as i64;
    // A caller whose clock is decades off Redis's: the TTL depends only on the lease.
    let now = Timestamp::from_millis(1_000);
    let req = request("s", "k", Duration::from_secs(30));
    let claim = store.claim(&req, now).await.unwrap().into_new().unwrap();
    let ttl = pttl(&record_key(&prefix, "s", "k")).await;
    assert!(
        (30_000 + grace - 5_000..=30_000 + grace).contains(&ttl),
        "{ttl}"
    );
    // Completed with a week's retention: the TTL covers it from the claim on, plus the grace.
    let week = 7 * 24 * 3600 * 1000;
    store
        .complete(&claim, b"ok", Timestamp::from_millis(1_000 + week))
        .await
        .unwrap();
    let ttl = pttl(&record_key(&prefix, "s", "k")).await;
    assert!(
        (week + grace - 5_000..=week + grace).contains(&ttl),
        "{ttl}"
    );
    // A completion that is refused (done already) leaves the record and its TTL as they were.
    assert!(
        store
            .complete(&claim, b"again", Timestamp::from_millis(2_000))
            .await
            .is_err()
    );
    let ttl = pttl(&record_key(&prefix, "s", "k")).await;
    assert!(
        (week + grace - 5_000..=week + grace).contains(&ttl),
        "{ttl}"
    );
    let rec = store.get(&claim.scope, &claim.key).await.unwrap().unwrap();
    assert_eq!(rec.outcome(), Some(&b"ok"[..]));

    // With the backstop off, records carry no TTL at all.
    let (prefix, store) = open_fresh("&ttl_grace=off").await;
    let claim = store.claim(&req, now).await.unwrap().into_new().unwrap();
    assert_eq!(pttl(&record_key(&prefix, "s", "k")).await, -1);
    store
        .complete(&claim, b"ok", Timestamp::from_millis(2_000))
        .await
        .unwrap();
    assert_eq!(pttl(&record_key(&prefix, "s", "k")).await, -1);
}

#[tokio::test]
async fn renewal_moves_the_native_expiry_with_the_deadline() {
    let (prefix, store) = open_fresh("").await;
    let grace = DEFAULT_TTL_GRACE.as_millis() as i64;
    let record = record_key(&prefix, "s", "k");
    let now = Timestamp::from_millis(1_000);
    let req = request("s", "k", Duration::from_secs(30));
    let claim = store.claim(&req, now).await.unwrap().into_new().unwrap();
    // Renewed to ten minutes after the claim: Redis must not drop it before then (plus grace).
    let ten_minutes = 600_000;
    let lease_until = Timestamp::from_millis(1_000 + ten_minutes);
    store.extend(&claim, lease_until).await.unwrap();
    let ttl = pttl(&record).await;
    assert!(
        (ten_minutes + grace - 5_000..=ten_minutes + grace).contains(&ttl),
        "{ttl}"
    );
    // Past the first lease, stats count it live and purge leaves it alone.
    let later = Timestamp::from_millis(1_000 + 60_000);
    let stats = store.stats(later).await.unwrap();
    assert_eq!((stats.records, stats.in_progress, stats.expired), (1, 1, 0));
    assert_eq!(store.purge(later, 10).await.unwrap(), 0);
    assert_eq!(
        store
            .get(&claim.scope, &claim.key)
            .await
            .unwrap()
            .unwrap()
            .expires_at,
        lease_until
    );

    // With the backstop off, a renewal leaves the record without a TTL.
    let (prefix, store) = open_fresh("&ttl_grace=off").await;
    let claim = store.claim(&req, now).await.unwrap().into_new().unwrap();
    store.extend(&claim, lease_until).await.unwrap();
    assert_eq!(pttl(&record_key(&prefix, "s", "k")).await, -1);
}

#[tokio::test]
async fn complete_many_across_scopes_answers_in_order_and_keeps_ttls() {
    let (prefix, store) = open_fresh("").await;
    let grace = DEFAULT_TTL_GRACE.as_millis() as i64;
    let now = Timestamp::from_millis(1_000);
    let lease = Duration::from_secs(30);
    // Interleaved scopes, so the answers must be put back in the items' order.
    let requests: Vec<_> = [("a", "1"), ("b", "1"), ("a", "2"), ("b", "2"), ("a", "3")]
        .iter()
        .map(|(s, k)| request(s, k, lease))
        .collect();
    let claims: Vec<_> = store
        .claim_many(&requests, now)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.into_new().unwrap())
        .collect();
    // b/2 is released before the batch: its item alone is lost.
    store.release(&claims[3]).await.unwrap();
    let week = 7 * 24 * 3600 * 1000;
    let expires_at = Timestamp::from_millis(1_000 + week);
    let items: Vec<_> = claims
        .iter()
        .map(|c| oncely_core::Completion {
            claim: c.clone(),
            outcome: format!("{}/{}", c.scope, c.key).into_bytes(),
            expires_at,
        })
        .collect();
    let results = store.complete_many(&items).await.unwrap();
    assert_eq!(results.len(), 5);
    for (i, r) in results.iter().enumerate() {
        if i == 3 {
            assert!(
                matches!(
                    r,
                    Err(Error::ClaimLost {
                        reason: LostReason::Missing,
                        ..
                    })
                ),
                "{r:?}"
            );
        } else {
            assert!(r.is_ok(), "{i}: {r:?}");
        }
    }
    for (i, c) in claims.iter().enumerate().filter(|(i, _)| *i != 3) {
        let rec = store.get(&c.scope, &c.key).await.unwrap().unwrap();
        assert_eq!(rec.outcome(), Some(&items[i].outcome[..]), "{i}");
        assert_eq!(rec.expires_at, expires_at);
        let ttl = pttl(&record_key(&prefix, c.scope.as_str(), c.key.as_str())).await;
        assert!(
            (week + grace - 5_000..=week + grace).contains(&ttl),
            "{ttl}"
        );
    }
    let stats = store.stats(now).await.unwrap();
    assert_eq!((stats.records, stats.completed), (4, 4));
    // Completing again: every item is already done (or still missing), nothing changes.
    let again = store.complete_many(&items).await.unwrap();
    assert!(again.iter().all(Result::is_err), "{again:?}");
    assert!(store.complete_many(&[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn tokens_timestamps_and_versions_at_their_limits_are_exact() {
    let store = open(&servers::redis_url(PREFIX).await).await;
    // Lua numbers are doubles: u64::MAX and u64::MAX - 1 are one double, yet two tokens.
    let mut req = request("s", "max", Duration::from_secs(30));
    req.token = u64::MAX;
    let now = Timestamp::from_millis(i64::MAX - 10);
    let mut claim = store.claim(&req, now).await.unwrap().into_new().unwrap();
    let rec = store
        .get(&req.scope, &req.key)
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(
        (rec.token, rec.expires_at),
        (u64::MAX, Timestamp::from_millis(i64::MAX))
    );
    assert!(matches!(
        store
            .claim(&req, Timestamp::from_millis(i64::MAX))
            .await
            .unwrap(),
        ClaimOutcome::InProgress { .. }
    ));
    claim.token = u64::MAX - 1;
    match store.complete(&claim, b"x", now).await {
        Err(Error::ClaimLost { reason, .. }) => assert_eq!(reason, LostReason::TakenOver),
        other => panic!("expected TakenOver, got {other:?}"),
    }
    claim.token = u64::MAX;
    store
        .complete(&claim, b"x", Timestamp::from_millis(i64::MAX))
        .await
        .unwrap();

    // Times before 1970 compare right too: live through the deadline, taken over after it.
    let req = request("s", "past", Duration::from_secs(5));
    store
        .claim(&req, Timestamp::from_millis(-10_000))
        .await
        .unwrap()
        .into_new()
        .unwrap();
    assert_eq!(
        store
            .claim(&req, Timestamp::from_millis(-5_000))
            .await
            .unwrap(),
        ClaimOutcome::InProgress {
            retry_after: Duration::from_millis(1)
        }
    );
    let again = store
        .claim(&req, Timestamp::from_millis(-4_999))
        .await
        .unwrap();
    assert!(
        matches!(&again, ClaimOutcome::New(c) if c.attempt == 2),
        "{again:?}"
    );

    // 2^53 + 1 and 2^53 are one double, yet two versions.
    let (scope, entity) = (Scope::default(), Key::new("e").unwrap());
    let big = (1u64 << 53) + 1;
    assert_eq!(
        store.apply_if_newer(&scope, &entity, big).await.unwrap(),
        VersionCheck::Applied { previous: None }
    );
    assert_eq!(
        store
            .apply_if_newer(&scope, &entity, big - 1)
            .await
            .unwrap(),
        VersionCheck::Stale { current: big }
    );
    assert_eq!(
        store
            .apply_if_newer(&scope, &entity, u64::MAX)
            .await
            .unwrap(),
        VersionCheck::Applied {
            previous: Some(big)
        }
    );
    assert_eq!(
        store
            .apply_if_newer(&scope, &entity, u64::MAX - 1)
            .await
            .unwrap(),
        VersionCheck::Stale { current: u64::MAX }
    );
}

#[tokio::test]
async fn scripts_are_loaded_again_after_a_script_flush() {
    let store = open(&servers::redis_url(PREFIX).await).await;
    let now = Timestamp::from_millis(1_000);
    store
        .claim(&request("s", "a", Duration::from_secs(1)), now)
        .await
        .unwrap();
    // Only scripts go: other runs' records are untouched, and they reload theirs the same way.
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut raw().await)
        .await
        .unwrap();
    let outcome = store
        .claim(&request("s", "b", Duration::from_secs(1)), now)
        .await
        .unwrap();
    assert!(matches!(outcome, ClaimOutcome::New(_)), "{outcome:?}");
}

#[tokio::test]
async fn prefixes_keep_stores_apart() {
    let (a, b) = (
        open(&servers::redis_url(PREFIX).await).await,
        open(&servers::redis_url(PREFIX).await).await,
    );
    let now = Timestamp::from_millis(1_000);
    let req = request("s", "k", Duration::from_secs(30));
    assert!(matches!(
        a.claim(&req, now).await.unwrap(),
        ClaimOutcome::New(_)
    ));
    assert!(matches!(
        b.claim(&req, now).await.unwrap(),
        ClaimOutcome::New(_)
    ));
    assert_eq!(b.stats(now).await.unwrap().records, 1);
}

#[tokio::test]
async fn purge_walks_a_large_backlog_in_small_batches() {
    let store = open(&servers::redis_url(PREFIX).await).await;
    let now = Timestamp::from_millis(1_000_000);
    let requests: Vec<ClaimRequest> = (0..300)
        .map(|i| request("s", &format!("k{i}"), Duration::from_secs(1)))
        .chain((0..5).map(|i| request("t", &format!("k{i}"), Duration::from_secs(1))))
        .collect();
    store.claim_many(&requests, now).await.unwrap();
    let later = Timestamp::from_millis(1_000_000 + 10_000);
    assert_eq!(store.purge(later, 200).await.unwrap(), 200);
    assert_eq!(store.purge(later, 1_000).await.unwrap(), 105);
    assert_eq!(store.stats(later).await.unwrap().records, 0);
}

#[tokio::test]
async fn a_database_number_selects_the_database() {
    let prefix = servers::redis_prefix(PREFIX).await;
    let url = with_database(&servers::redis(), 3, &format!("prefix={prefix}"));
    let store = open(&url).await;
    store
        .claim(
            &request("s", "k", Duration::from_secs(30)),
            Timestamp::from_millis(1),
        )
        .await
        .unwrap();
    let mut conn = raw().await;
    let key = record_key(&prefix, "s", "k");
    let in_default_db: bool = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    redis::cmd("SELECT")
        .arg(3)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let in_db3: bool = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    // This run's keys in database 3 go now: the sweep of old runs looks at database 0 only.
    let (_, mine): (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(0)
        .arg("MATCH")
        .arg(format!("{prefix}*"))
        .arg("COUNT")
        .arg(100_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!mine.is_empty());
    redis::cmd("UNLINK")
        .arg(&mine)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    assert!(!in_default_db && in_db3);
}

/// `url` naming database `db`, with `param` in its query (replacing any database it named).
fn with_database(url: &str, db: u32, param: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    let query = if query.is_empty() {
        param.to_owned()
    } else {
        format!("{query}&{param}")
    };
    format!("{base}/{db}?{query}")
}

#[tokio::test]
async fn a_server_restart_is_reported_as_unavailable_then_the_store_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_ports(1)[0];
    let node = support::Node::start(dir.path(), port, &[]);
    let store = open(&format!("redis://127.0.0.1:{port}")).await;
    let now = Timestamp::from_millis(1_000);
    let req = |key: &str| request("s", key, Duration::from_secs(30));
    assert!(matches!(
        store.claim(&req("before"), now).await.unwrap(),
        ClaimOutcome::New(_)
    ));

    drop(node);
    match store.claim(&req("while-down"), now).await {
        Err(Error::Unavailable { .. }) => {}
        other => panic!("expected Unavailable while the server is down, got {other:?}"),
    }

    // Back (empty: no persistence here). The store reconnects by itself within a few tries.
    let _node = support::Node::start(dir.path(), port, &[]);
    let mut last = None;
    for _ in 0..50 {
        match store.claim(&req("after"), now).await {
            Ok(outcome) => {
                assert!(matches!(outcome, ClaimOutcome::New(_)), "{outcome:?}");
                return;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the store did not reconnect within 5 s: {last:?}");
}

/// Writes a record as versions before the one-string record did: a hash, indexed by
/// `expires_at` in the scope's sorted sets (`x` every record, `c` the completed ones).
async fn write_legacy(prefix: &str, key: &str, fields: &[(&str, &[u8])]) {
    let mut conn = raw().await;
    let mut hset = redis::cmd("HSET");
    hset.arg(record_key(prefix, "s", key));
    for (name, value) in fields {
        hset.arg(*name).arg(*value);
    }
    hset.query_async::<()>(&mut conn).await.unwrap();
    let expires_at = fields.iter().find(|(n, _)| *n == "e").unwrap().1;
    let expires_at: f64 = std::str::from_utf8(expires_at).unwrap().parse().unwrap();
    let done = fields.iter().any(|(n, v)| *n == "s" && *v == b"d");
    for (index, wanted) in [("x", true), ("c", done)] {
        if wanted {
            redis::cmd("ZADD")
                .arg(format!("{prefix}:{{s}}:{index}"))
                .arg(expires_at)
                .arg(key)
                .query_async::<()>(&mut conn)
                .await
                .unwrap();
        }
    }
    redis::cmd("SADD")
        .arg(format!("{prefix}:scopes"))
        .arg("s")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
}

async fn indexed(prefix: &str, key: &str) -> bool {
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(format!("{prefix}:{{s}}:x"))
        .arg(key)
        .query_async(&mut raw().await)
        .await
        .unwrap();
    score.is_some()
}

/// A rolling upgrade: records the earlier version wrote (hashes with their indexes) are read,
/// answered, replaced, forgotten, counted and purged by this one, which writes strings.
#[tokio::test]
async fn records_an_earlier_version_wrote_as_hashes_are_answered_replaced_and_purged() {
    let (prefix, store) = open_fresh("").await;
    let fp = [7u8; 32];
    write_legacy(
        &prefix,
        "done",
        &[
            ("s", b"d"),
            ("f", &fp),
            ("t", b"11"),
            ("a", b"1"),
            ("c", b"900"),
            ("e", b"1000000"),
            ("o", b"paid"),
        ],
    )
    .await;
    let running = [
        ("s", &b"p"[..]),
        ("t", b"5"),
        ("a", b"1"),
        ("c", b"900"),
        ("e", b"31000"),
    ];
    write_legacy(&prefix, "running", &running).await;
    let stale = [
        ("s", &b"p"[..]),
        ("t", b"6"),
        ("a", b"2"),
        ("c", b"100"),
        ("e", b"500"),
    ];
    write_legacy(&prefix, "stale", &stale).await;
    let old = [
        ("s", &b"d"[..]),
        ("t", b"7"),
        ("a", b"1"),
        ("c", b"100"),
        ("e", b"600"),
        ("o", b""),
    ];
    write_legacy(&prefix, "old", &old).await;
    // Only its index entry is left: native expiry took the hash.
    write_legacy(&prefix, "gone", &[("e", b"700")]).await;
    redis::cmd("DEL")
        .arg(record_key(&prefix, "s", "gone"))
        .query_async::<()>(&mut raw().await)
        .await
        .unwrap();

    let now = Timestamp::from_millis(1_000);
    let (scope, lease) = (Scope::new("s").unwrap(), Duration::from_secs(30));
    let key = |k: &str| Key::new(k).unwrap();
    let rec = store.get(&scope, &key("done")).await.unwrap().unwrap();
    assert_eq!(rec.outcome(), Some(&b"paid"[..]));
    assert_eq!(
        (rec.token, rec.attempt, rec.created_at, rec.expires_at),
        (
            11,
            1,
            Timestamp::from_millis(900),
            Timestamp::from_millis(1_000_000)
        )
    );
    let fingerprint = oncely_core::Fingerprint::from_slice(&fp);
    assert_eq!(rec.fingerprint, fingerprint);

    let mut same = request("s", "done", lease);
    same.fingerprint = fingerprint;
    match store.claim(&same, now).await.unwrap() {
        ClaimOutcome::Duplicate(r) => assert_eq!(r.outcome(), Some(&b"paid"[..])),
        other => panic!("expected Duplicate, got {other:?}"),
    }
    same.fingerprint = oncely_core::Fingerprint::from_slice(&[8u8; 32]);
    assert!(matches!(
        store.claim(&same, now).await.unwrap(),
        ClaimOutcome::Conflict { .. }
    ));
    assert!(matches!(
        store
            .claim(&request("s", "running", lease), now)
            .await
            .unwrap(),
        ClaimOutcome::InProgress { .. }
    ));

    let stats = store.stats(now).await.unwrap();
    assert_eq!(
        (
            stats.records,
            stats.completed,
            stats.in_progress,
            stats.expired
        ),
        (5, 1, 1, 3)
    );

    // An expired legacy claim is taken over: the next attempt, a string, out of the index.
    let claim = match store
        .claim(&request("s", "stale", lease), now)
        .await
        .unwrap()
    {
        ClaimOutcome::New(c) => c,
        other => panic!("expected New, got {other:?}"),
    };
    assert_eq!(claim.attempt, 3);
    assert!(!indexed(&prefix, "stale").await);
    store
        .complete(&claim, b"shipped", Timestamp::from_millis(2_000_000))
        .await
        .unwrap();
    let kind: String = redis::cmd("TYPE")
        .arg(record_key(&prefix, "s", "stale"))
        .query_async(&mut raw().await)
        .await
        .unwrap();
    assert_eq!(kind, "string");

    // Forgetting a legacy record takes its index entry with it; a wrong token removes nothing.
    assert!(!store.forget(&scope, &key("running"), 6).await.unwrap());
    assert!(store.forget(&scope, &key("running"), 5).await.unwrap());
    assert!(store.get(&scope, &key("running")).await.unwrap().is_none());
    assert!(!indexed(&prefix, "running").await);

    // Purge takes the expired legacy record and the orphaned index entry, nothing live.
    assert_eq!(store.purge(now, 10).await.unwrap(), 2);
    assert!(!indexed(&prefix, "old").await && !indexed(&prefix, "gone").await);
    let stats = store.stats(now).await.unwrap();
    assert_eq!((stats.records, stats.completed), (2, 2));
    let rec = store.get(&scope, &key("stale")).await.unwrap().unwrap();
    assert_eq!(rec.outcome(), Some(&b"shipped"[..]));

    // A claim of this version whose key an earlier version took over (after the record
    // vanished) is lost, and the hash is left as it was.
    let mine = match store
        .claim(&request("s", "late", lease), now)
        .await
        .unwrap()
    {
        ClaimOutcome::New(c) => c,
        other => panic!("expected New, got {other:?}"),
    };
    redis::cmd("DEL")
        .arg(record_key(&prefix, "s", "late"))
        .query_async::<()>(&mut raw().await)
        .await
        .unwrap();
    write_legacy(&prefix, "late", &running).await;
    match store
        .complete(&mine, b"x", Timestamp::from_millis(2_000_000))
        .await
    {
        Err(Error::ClaimLost { reason, .. }) => assert_eq!(reason, LostReason::TakenOver),
        other => panic!("expected TakenOver, got {other:?}"),
    }
    let theirs = store.get(&scope, &key("late")).await.unwrap().unwrap();
    assert_eq!((theirs.token, theirs.outcome()), (5, None));
}

/// Purge and stats find records by a `SCAN` pattern: a prefix or scope with glob characters
/// must match only itself.
#[tokio::test]
async fn glob_characters_in_prefixes_and_scopes_match_only_themselves() {
    let base = servers::redis_prefix(PREFIX).await;
    let url = |prefix: String| support::with_param(&servers::redis(), &format!("prefix={prefix}"));
    let (star, plain) = (
        open(&url(format!("{base}*"))).await,
        open(&url(format!("{base}x"))).await,
    );
    let now = Timestamp::from_millis(1_000);
    let lease = Duration::from_secs(1);
    for store in [&star, &plain] {
        store
            .claim_many(&[request("a*", "k", lease), request("ab", "k", lease)], now)
            .await
            .unwrap();
    }
    let later = Timestamp::from_millis(10_000);
    assert_eq!(star.stats(later).await.unwrap().records, 2);
    assert_eq!(star.purge(later, 100).await.unwrap(), 2);
    assert_eq!(plain.stats(later).await.unwrap().records, 2);
    assert_eq!(plain.purge(later, 100).await.unwrap(), 2);
}

/// Purge is called for a small batch at a time: each call goes on where the last one stopped,
/// rather than passing the same live records again, and walks the server once for every scope,
/// not once per scope (here a second scope holds nothing to purge, as a busy service's would).
/// Counted in `SCAN` calls, on a server of the test's own.
#[tokio::test]
async fn purge_in_small_batches_goes_on_where_the_last_one_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_ports(1)[0];
    let _node = support::Node::start(dir.path(), port, &[]);
    let url = format!("redis://127.0.0.1:{port}");
    let store = open(&url).await;
    let now = Timestamp::from_millis(1_000_000);
    let live: Vec<_> = (0..2_000)
        .map(|i| request("s", &format!("live{i}"), Duration::from_secs(3_600)))
        .collect();
    store.claim_many(&live, now).await.unwrap();
    let idle: Vec<_> = (0..2_000)
        .map(|i| request("idle", &format!("live{i}"), Duration::from_secs(3_600)))
        .collect();
    store.claim_many(&idle, now).await.unwrap();
    let short: Vec<_> = (0..40)
        .map(|i| request("s", &format!("short{i}"), Duration::from_secs(1)))
        .collect();
    store.claim_many(&short, now).await.unwrap();
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut scans = async || -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_scan:calls="))
            .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
    };
    let before = scans().await;
    let later = Timestamp::from_millis(1_000_000 + 10_000);
    let mut removed = 0;
    for _ in 0..40 {
        removed += store.purge(later, 1).await.unwrap();
    }
    assert_eq!(removed, 40);
    // One walk over these 4,040 keys is about 32 pages of 128, and each call may read its
    // first page again. Starting over at each call, the 40 calls would take about half a walk
    // each (~640 pages); a walk per scope, one more whole walk each for the idle scope
    // (~1,300 more).
    let used = scans().await - before;
    assert!(
        used < 150,
        "{used} SCAN calls for 40 purges of one record each"
    );
    assert_eq!(store.purge(later, 100).await.unwrap(), 0);
    assert_eq!(store.stats(later).await.unwrap().records, 4_000);
}
