// The shared conformance suite and model test, against the MySQL/MariaDB server on loopback.
// Each test gets a database of its own. `ONCELY_TEST_MYSQL` overrides the server URL.

use std::sync::Arc;

use oncely_conformance::libtest_mimic::Trial;
use oncely_conformance::servers;
use oncely_mysql::MySqlStore;

fn main() {
    let select_path = env!("CARGO_CRATE_NAME") == "read_back_with_select";
    let (backend, prefix) = if select_path {
        // MySQL's way of reading a batch back (insert, then SELECT), on MariaDB: the
        // `read_back_with_select` test binary, which is this file again.
        oncely_mysql::read_back_with_select();
        ("mysql-select", "oncely_sel")
    } else {
        ("mysql", "oncely_conf")
    };
    let factory = move || async move {
        let url = servers::mysql_url(prefix).await;
        Arc::new(MySqlStore::connect(&url).await.expect("connect")) as _
    };
    let path = Trial::test(
        format!("{backend}::batches_are_read_back_the_way_the_server_allows"),
        move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(async move {
                    let url = servers::mysql_url(prefix).await;
                    let store = MySqlStore::connect(&url).await.expect("connect");
                    let oncely = oncely_core::Oncely::new(Arc::new(store));
                    let scope = oncely_core::Scope::default();
                    let keys = ["a", "b", "a"]
                        .map(|k| (scope.clone(), oncely_core::Key::new(k).unwrap(), None));
                    let outcomes = oncely.claim_many(keys).await.expect("claim_many");
                    assert_eq!(
                        outcomes
                            .iter()
                            .filter(|o| matches!(o, oncely_core::ClaimOutcome::New(_)))
                            .count(),
                        2
                    );
                    let mut conn = <sqlx::MySqlConnection as sqlx::Connection>::connect(&url)
                        .await
                        .unwrap();
                    let version: String = sqlx::query_scalar("SELECT VERSION()")
                        .fetch_one(&mut conn)
                        .await
                        .unwrap();
                    // MariaDB takes INSERT ... RETURNING; MySQL refuses it and the store falls back.
                    let expected = version.contains("MariaDB") && !select_path;
                    if oncely_mysql::reads_back_with_returning() != expected {
                        return Err(format!("{version}: RETURNING in use = {}", !expected).into());
                    }
                    Ok(())
                })
        },
    );
    oncely_conformance::run(backend, factory, vec![path]).exit()
}
