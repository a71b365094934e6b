//! # oncely-dynamodb
//!
//! oncely's store on Amazon DynamoDB: one item per record in a table of your choice, every
//! change a single-item conditional write, so each is atomic on DynamoDB itself.
//!
//! ```no_run
//! # async fn example() -> oncely_core::Result<()> {
//! use std::sync::Arc;
//! use oncely_core::Oncely;
//! use oncely_dynamodb::DynamoStore;
//!
//! // Creates the table `oncely` (on demand, TTL on) if it is missing.
//! let store = DynamoStore::connect("dynamodb://dynamodb.eu-west-1.amazonaws.com/oncely?region=eu-west-1").await?;
//! let oncely = Oncely::new(Arc::new(store));
//! # Ok(()) }
//! ```
//!
//! ## URL
//!
//! `dynamodb://HOST[:PORT]/TABLE` over HTTPS, `dynamodb+http://HOST:PORT/TABLE` for an
//! emulator on loopback (the tests use moto's). `region=` names the region signed for (else
//! `AWS_REGION`, else `us-east-1`); `oncely_migrate=false` leaves the table to your
//! infrastructure code (partition key `o_id`, a string; TTL on the attribute `o_ttl`).
//! Credentials are found as the AWS SDKs find them (environment, profile, web identity,
//! container, instance metadata: `oncely_aws::credentials`).
//!
//! ## How each operation is written
//!
//! - **claim**: `PutItem` with `attribute_not_exists(o_id)`; if the key exists, the item is
//!   read (consistently), decided by the rules every store shares
//!   (`oncely_core::lifecycle::decide_claim`), and a takeover is written with
//!   `o_token = <the token read>`, so of two takeovers of one expired lease only one lands.
//! - **complete**, **extend**: `UpdateItem` on `o_token = <the holder's> AND o_state = p`;
//!   **release**: `DeleteItem` on the same condition; a refused write is read back to say why
//!   the claim is lost. **forget**: `DeleteItem` on the token.
//! - **claim_many**: each request in order, one conditional write each: the contract asks for
//!   atomicity per request, not per batch, and a DynamoDB transaction would cost twice the
//!   writes.
//! - **the version guard**: `UpdateItem` on `attribute_not_exists(o_version) OR o_version < v`,
//!   answering the old version.
//! - **retention**: DynamoDB's TTL removes items an hour after their end (`o_ttl`), within a day
//!   or two; expired records count as absent until then. `purge` and `stats` scan the table
//!   (use them on small tables, or leave retention to TTL).
//!
//! ## What only real DynamoDB can prove
//!
//! The tests run the whole conformance suite and the model test against moto's DynamoDB
//! server on loopback (`scripts/dynamodb-server.py`), which applies one request at a time.
//! They prove the store's logic, not DynamoDB's: that conditional writes to one item are
//! atomic under concurrency across DynamoDB's partitions, that a consistent read sees every
//! write acknowledged before it, that TTL deletes only after `o_ttl`, and the errors, throttling
//! and latency of the real service, are DynamoDB's documented behaviour, not tested here.
//! DynamoDB has no clock to read, so leases are decided by each host's own clock: keep the
//! hosts synced (AWS's time sync service, NTP).

#![warn(missing_docs)]

mod item;
mod options;
mod store;

pub use options::DynamoOptions;
pub use store::DynamoStore;
