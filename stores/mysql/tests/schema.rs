//! The schema: applied on first use, or by the user from the shipped SQL with
//! `oncely_migrate=false`.

use oncely_conformance::servers;
use oncely_core::{ClaimOutcome, Key, Oncely, Scope};
use oncely_mysql::{MIGRATIONS, MySqlStore};
use sqlx::MySqlPool;

/// A URL naming a fresh, empty database; `name` says which test's it is.
async fn fresh_database(name: &str) -> String {
    servers::mysql_url(&format!("oncely_schema_{name}")).await
}

#[tokio::test]
async fn the_shipped_sql_applied_by_hand_is_what_the_store_expects() {
    let url = fresh_database("by_hand").await;
    let sql = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations/0001_records.sql"
    ))
    .unwrap();
    assert_eq!(
        sql, MIGRATIONS[0].1,
        "the shipped file is the one the store applies"
    );
    // As a user would: the whole file through the mysql client.
    let database = url.rsplit('/').next().unwrap();
    let status = std::process::Command::new("mariadb")
        .args(["-h127.0.0.1", "-uroot", database])
        .stdin(
            std::fs::File::open(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/migrations/0001_records.sql"
            ))
            .unwrap(),
        )
        .status()
        .expect("the mariadb client (Debian package mariadb-client)");
    assert!(status.success());

    let store = MySqlStore::connect(&format!("{url}?oncely_migrate=false"))
        .await
        .unwrap();
    let pool = MySqlPool::connect(&url).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = 'oncely_schema_version'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 0, "migrate=false must not touch the schema");
    let oncely = Oncely::new(std::sync::Arc::new(store));
    let key = Key::new("k").unwrap();
    let claim = oncely
        .claim(&Scope::default(), &key, None)
        .await
        .unwrap()
        .into_new()
        .unwrap();
    oncely.complete(&claim, b"ok").await.unwrap();
    assert!(matches!(
        oncely.claim(&Scope::default(), &key, None).await.unwrap(),
        ClaimOutcome::Duplicate(_)
    ));
}

#[tokio::test]
async fn migrations_apply_once_however_many_instances_start_together() {
    let url = fresh_database("together").await;
    let starts: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { MySqlStore::connect(&url).await.map(drop) })
        })
        .collect();
    for start in starts {
        start.await.unwrap().unwrap();
    }
    let pool = MySqlPool::connect(&url).await.unwrap();
    let versions: Vec<i32> =
        sqlx::query_scalar("SELECT version FROM oncely_schema_version ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        versions,
        MIGRATIONS.iter().map(|(v, _)| *v).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_bad_migrate_flag_is_a_clear_error() {
    let err = MySqlStore::connect(&format!("{}?oncely_migrate=maybe", servers::mysql()))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("oncely_migrate must be true or false"),
        "{err}"
    );
}

#[tokio::test]
async fn a_server_that_is_down_is_a_clear_error() {
    // Nothing listens on port 1.
    let err = MySqlStore::connect("mysql://root:s3cret@127.0.0.1:1/test")
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, oncely_core::Error::Unavailable { .. }),
        "{message}"
    );
    assert!(message.contains("is MySQL/MariaDB running?"), "{message}");
    assert!(!message.contains("s3cret"), "{message}");
}
