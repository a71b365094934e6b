//! The version guard (`apply_if_newer`): only a newer version applies, also under concurrent
//! callers.

use std::collections::HashMap;
use std::sync::Arc;

use oncely_core::{Oncely, Scope, Store, VersionCheck};
use tokio::sync::Barrier;

use super::{key, scope, setup};

tests!(version_guard_applies_only_newer_versions);

async fn version_guard_applies_only_newer_versions(store: Arc<dyn Store>) {
    let (oncely, _) = setup(store);
    let (s, e) = (Scope::default(), key("order-1"));
    assert_eq!(
        oncely.apply_if_newer(&s, &e, 5).await.unwrap(),
        VersionCheck::Applied { previous: None }
    );
    assert_eq!(
        oncely.apply_if_newer(&s, &e, 5).await.unwrap(),
        VersionCheck::Stale { current: 5 }
    );
    assert_eq!(
        oncely.apply_if_newer(&s, &e, 4).await.unwrap(),
        VersionCheck::Stale { current: 5 }
    );
    assert_eq!(
        oncely.apply_if_newer(&s, &e, 9).await.unwrap(),
        VersionCheck::Applied { previous: Some(5) }
    );
    // Versions are per entity and per scope.
    assert_eq!(
        oncely.apply_if_newer(&s, &key("order-2"), 1).await.unwrap(),
        VersionCheck::Applied { previous: None }
    );
    assert_eq!(
        oncely.apply_if_newer(&scope("other"), &e, 1).await.unwrap(),
        VersionCheck::Applied { previous: None }
    );
    assert_eq!(
        oncely.apply_if_newer(&s, &key("zero"), 0).await.unwrap(),
        VersionCheck::Applied { previous: None }
    );
    assert_eq!(
        oncely.apply_if_newer(&s, &key("zero"), 0).await.unwrap(),
        VersionCheck::Stale { current: 0 }
    );
    version_guard_under_concurrency(&oncely).await;
}

/// Concurrent callers of the version guard. A read-then-write that is not atomic lets two
/// callers apply over the same stored version; each check below sees that.
async fn version_guard_under_concurrency(oncely: &Oncely) {
    const RACERS: usize = 8;
    const ROUNDS: u64 = 20;
    const VERSIONS: u64 = 40;
    let race = |entity: &'static str, versions: Vec<u64>| {
        let barrier = Arc::new(Barrier::new(versions.len()));
        let tasks: Vec<_> = versions
            .into_iter()
            .map(|v| {
                let (oncely, barrier) = (oncely.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let check = oncely
                        .apply_if_newer(&Scope::default(), &key(entity), v)
                        .await
                        .unwrap();
                    (v, check)
                })
            })
            .collect();
        async move {
            let mut checks = Vec::new();
            for t in tasks {
                checks.push(t.await.unwrap());
            }
            checks
        }
    };

    // Rounds of callers racing to apply one version, each round's above the last: in every
    // round exactly one caller applies it, over the previous round's, and the others are stale.
    for v in 1..=ROUNDS {
        let checks = race("rounds", vec![v; RACERS]).await;
        let applied: Vec<_> = checks
            .iter()
            .filter(|(_, c)| matches!(c, VersionCheck::Applied { .. }))
            .collect();
        let previous = (v > 1).then(|| v - 1);
        assert_eq!(
            applied,
            [&(v, VersionCheck::Applied { previous })],
            "round {v}: exactly one of {RACERS} callers applies version {v}: {checks:?}"
        );
        assert!(
            checks
                .iter()
                .all(|(_, c)| matches!(c, VersionCheck::Applied { .. })
                    || *c == VersionCheck::Stale { current: v }),
            "round {v}: {checks:?}"
        );
    }

    // Every version at once, each sent by three callers, in a scrambled order: each version is
    // applied at most once, the applied ones form one chain (each applied over the one applied
    // just before it, so none was lost), and the chain ends at the highest version.
    let versions: Vec<u64> = (0..3)
        .flat_map(|pass| (0..VERSIONS).map(move |i| (i * (7 + 2 * pass) + pass) % VERSIONS + 1))
        .collect();
    let checks = race("storm", versions).await;
    let mut applied: Vec<(u64, Option<u64>)> = checks
        .iter()
        .filter_map(|(v, c)| match c {
            VersionCheck::Applied { previous } => Some((*v, *previous)),
            VersionCheck::Stale { .. } => None,
        })
        .collect();
    applied.sort();
    let mut per_version: HashMap<u64, usize> = HashMap::new();
    for (v, _) in &applied {
        *per_version.entry(*v).or_default() += 1;
    }
    assert!(
        per_version.values().all(|&n| n == 1),
        "a version applied more than once: {applied:?}"
    );
    let mut before = None;
    for &(v, previous) in &applied {
        assert_eq!(
            previous, before,
            "version {v} applied over {previous:?}, but the version applied before it was \
             {before:?}: {applied:?}"
        );
        before = Some(v);
    }
    assert_eq!(
        before,
        Some(VERSIONS),
        "the highest version is applied: {applied:?}"
    );
    for (v, check) in &checks {
        if let VersionCheck::Stale { current } = check {
            assert!(
                current >= v && per_version.contains_key(current),
                "{v} answered {check:?}: {applied:?}"
            );
        }
    }
    for entity in ["rounds", "storm"] {
        let highest = if entity == "rounds" { ROUNDS } else { VERSIONS };
        assert_eq!(
            oncely
                .apply_if_newer(&Scope::default(), &key(entity), highest)
                .await
                .unwrap(),
            VersionCheck::Stale { current: highest }
        );
    }
}
