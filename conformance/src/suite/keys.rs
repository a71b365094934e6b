//! What a record holds comes back exactly: keys and scopes at their limits or with unusual
//! characters, each spelling its own key, outcomes byte for byte, and scopes kept apart.

use std::sync::Arc;
use std::time::Duration;

use oncely_core::{
    ClaimOutcome, Key, KeyError, LostReason, MAX_KEY_BYTES, MAX_SCOPE_BYTES, Scope, Store,
};

use super::{expect_lost, expect_new, fp, key, scope, setup};

tests!(
    empty_and_oversized_keys_are_typed_errors,
    longest_keys_and_scopes_round_trip_exactly,
    unusual_keys_are_stored_verbatim_and_kept_distinct,
    uuid_keys_differing_only_in_case_or_form_are_distinct,
    outcomes_round_trip_byte_for_byte,
    scopes_are_kept_apart,
);

async fn empty_and_oversized_keys_are_typed_errors(store: Arc<dyn Store>) {
    let (oncely, _) = setup(store);
    assert_eq!(Key::new(""), Err(KeyError::Empty { what: "key" }));
    assert_eq!(
        Key::new("k".repeat(MAX_KEY_BYTES + 1)),
        Err(KeyError::TooLong {
            what: "key",
            len: MAX_KEY_BYTES + 1,
            max: MAX_KEY_BYTES
        })
    );
    assert_eq!(Scope::new(""), Err(KeyError::Empty { what: "scope" }));
    assert!(matches!(
        Scope::new("s".repeat(MAX_SCOPE_BYTES + 1)),
        Err(KeyError::TooLong { .. })
    ));
    // A rejected key never reaches the store: a neighbouring valid key is unaffected.
    let near = Key::new("k".repeat(MAX_KEY_BYTES)).unwrap();
    expect_new(oncely.claim(&Scope::default(), &near, None).await.unwrap());
}

async fn longest_keys_and_scopes_round_trip_exactly(store: Arc<dyn Store>) {
    let (oncely, _) = setup(store);
    // 170 three-byte characters plus two ASCII bytes: exactly 512 bytes.
    let long_key = Key::new(format!("{}ab", "€".repeat(170))).unwrap();
    assert_eq!(long_key.as_str().len(), MAX_KEY_BYTES);
    let long_scope = Scope::new("s".repeat(MAX_SCOPE_BYTES)).unwrap();
    let claim = expect_new(oncely.claim(&long_scope, &long_key, None).await.unwrap());
    oncely.complete(&claim, b"ok").await.unwrap();
    let rec = oncely.get(&long_scope, &long_key).await.unwrap().unwrap();
    assert_eq!((rec.scope, rec.key), (long_scope.clone(), long_key.clone()));
    // One byte short is a different key.
    let shorter = Key::new(format!("{}a", "€".repeat(170))).unwrap();
    expect_new(oncely.claim(&long_scope, &shorter, None).await.unwrap());
}

async fn unusual_keys_are_stored_verbatim_and_kept_distinct(store: Arc<dyn Store>) {
    let (oncely, _) = setup(store);
    let s = Scope::default();
    let keys = [
        "a",
        "A",
        "a ",
        " a",
        "a\0b",
        "a\nb",
        "'; DROP TABLE records; --",
        "%",
        "_",
        "\\",
        "ключ",
        "🔑",
        "a:b",
        "a/b",
        "{scope}",
    ];
    for k in keys {
        expect_new(oncely.claim(&s, &key(k), None).await.unwrap());
    }
    for k in keys {
        let rec = oncely.get(&s, &key(k)).await.unwrap().expect("stored");
        assert_eq!(rec.key.as_str(), k);
        assert!(matches!(
            oncely.claim(&s, &key(k), None).await.unwrap(),
            ClaimOutcome::InProgress { .. }
        ));
    }
}

async fn uuid_keys_differing_only_in_case_or_form_are_distinct(store: Arc<dyn Store>) {
    let (oncely, _) = setup(store);
    let s = Scope::default();
    // Stores may keep UUID keys compactly; every spelling must still be its own key.
    let spellings = [
        "0f8fad5b-d9cb-469f-a165-70867728950e",
        "0F8FAD5B-D9CB-469F-A165-70867728950E",
        "0f8fad5bd9cb469fa16570867728950e",
        "{0f8fad5b-d9cb-469f-a165-70867728950e}",
        "0f8fad5b-d9cb-469f-a165-70867728950",
        "0f8fad5b-d9cb-469f-a165-70867728950g",
    ];
    for (i, k) in spellings.iter().enumerate() {
        let claim = expect_new(oncely.claim(&s, &key(k), None).await.unwrap());
        oncely
            .complete(&claim, format!("out-{i}").as_bytes())
            .await
            .unwrap();
    }
    for (i, k) in spellings.iter().enumerate() {
        let rec = oncely.get(&s, &key(k)).await.unwrap().expect("stored");
        assert_eq!(rec.key.as_str(), *k);
        assert_eq!(rec.outcome(), Some(format!("out-{i}").as_bytes()));
    }
    assert_eq!(oncely.purge(Duration::ZERO, 100).await.unwrap(), 0);
    assert_eq!(
        oncely.stats().await.unwrap().completed,
        spellings.len() as u64
    );
}

async fn outcomes_round_trip_byte_for_byte(store: Arc<dyn Store>) {
    let (oncely, _) = setup(store);
    let s = Scope::default();
    let every_byte: Vec<u8> = (0..=255u8).cycle().take(1024).collect();
    let large: Vec<u8> = (0..1_048_576u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    for (name, outcome) in [
        ("empty", Vec::new()),
        ("every-byte", every_byte),
        ("one-mib", large),
    ] {
        let claim = expect_new(oncely.claim(&s, &key(name), None).await.unwrap());
        oncely.complete(&claim, &outcome).await.unwrap();
        match oncely.claim(&s, &key(name), None).await.unwrap() {
            ClaimOutcome::Duplicate(rec) => {
                assert!(rec.outcome() == Some(&outcome[..]), "{name} differs")
            }
            other => panic!("expected Duplicate, got {other:?}"),
        }
    }
}

async fn scopes_are_kept_apart(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store);
    let (a, b) = (scope("tenant-a"), scope("tenant-b"));
    let in_a = expect_new(oncely.claim(&a, &key("k"), fp("pa")).await.unwrap());
    // Same key, other scope, other payload: a different operation, not a conflict.
    let in_b = expect_new(oncely.claim(&b, &key("k"), fp("pb")).await.unwrap());
    oncely.complete(&in_a, b"from a").await.unwrap();
    assert!(matches!(
        oncely.claim(&b, &key("k"), fp("pb")).await.unwrap(),
        ClaimOutcome::InProgress { .. }
    ));
    oncely.complete(&in_b, b"from b").await.unwrap();
    assert_eq!(
        oncely.get(&a, &key("k")).await.unwrap().unwrap().outcome(),
        Some(&b"from a"[..])
    );
    assert_eq!(
        oncely.get(&b, &key("k")).await.unwrap().unwrap().outcome(),
        Some(&b"from b"[..])
    );
    // A holder from one scope cannot touch the other.
    let in_a2 = expect_new(oncely.claim(&a, &key("k2"), None).await.unwrap());
    let mut forged = in_a2.clone();
    forged.scope = b.clone();
    expect_lost(oncely.complete(&forged, b"x").await, LostReason::Missing);
    clock.advance(Duration::from_secs(1));
    assert!(matches!(
        oncely.claim(&a, &key("k2"), None).await.unwrap(),
        ClaimOutcome::InProgress { .. }
    ));
}
