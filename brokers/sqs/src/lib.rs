//! # oncely-sqs (work in progress: issue 7)
//!
//! Amazon SQS as a source for the oncely consumer runner. Not in the workspace yet: the broker
//! suite against moto (`moto_server`), the relay's publisher and the CLI wiring are still to do.
//!
//! How the contract maps onto SQS:
//!
//! | the runner asks | on SQS |
//! |---|---|
//! | ack | `DeleteMessage` (batched, up to 10 per call) |
//! | redeliver after `d` | `ChangeMessageVisibility` to `d` |
//! | in progress | `ChangeMessageVisibility` back to the full visibility timeout |
//! | dead letter | `SendMessage` of a copy to the dead-letter queue, then delete |
//!
//! A message received more than `max_receives` times (`ApproximateReceiveCount`: consumers
//! that died holding it) is dead-lettered on receipt, with that as its error.

#![warn(missing_docs)]

mod options;
mod publisher;
mod source;

pub use options::{Error, SqsOptions, client};
pub use publisher::SqsPublisher;
pub use source::{SqsDelivery, SqsSource};

/// The broker's name in [`BrokerError`](oncely_core::consumer::BrokerError)s.
pub const BROKER: &str = "sqs";
/// The message attribute carrying a message's stable id (the relay's row id).
pub const MESSAGE_ID_ATTRIBUTE: &str = "Oncely-Message-Id";
