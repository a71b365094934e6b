//! The conformance suite and the model test against moto's DynamoDB on loopback
//! (`scripts/dynamodb-server.py`; `ONCELY_TEST_DYNAMODB` names another endpoint), each test on
//! a table of its own.

use std::sync::Arc;

fn main() {
    let endpoint = std::env::var("ONCELY_TEST_DYNAMODB")
        .unwrap_or_else(|_| "dynamodb+http://127.0.0.1:5998".to_owned());
    oncely_conformance::main("dynamodb", move || {
        let url = format!("{endpoint}/oncely-test-{:016x}", fastrand::u64(..));
        async move {
            let store = oncely_dynamodb::DynamoStore::connect(&url)
                .await
                .unwrap_or_else(|e| panic!("DynamoDB at {url}: {e}"));
            Arc::new(store) as _
        }
    });
}
