//! # oncely-sqs
//!
//! Amazon SQS for oncely: [`SqsSource`], a consumer of one standard or FIFO queue for the
//! runner, and [`SqsPublisher`], the outbox relay's producer. Tested against moto's SQS; see the
//! README for what holds only on real SQS.
//!
//! How the runner's contract maps onto SQS:
//!
//! | the runner asks | on SQS |
//! |---|---|
//! | next message | `ReceiveMessage`, long polling, up to 10 a call |
//! | ack | `DeleteMessageBatch`, up to 10 acks a call |
//! | redeliver after `d` | `ChangeMessageVisibility` to `d` (at least 2^(receives-2) s) |
//! | in progress | `ChangeMessageVisibility` back to the full timeout; also every third of it while a message is out |
//! | dead letter | `SendMessage` of a copy to the dead-letter queue, then delete |
//!
//! A message received more than `max_receives` times (`ApproximateReceiveCount`: consumers
//! that died holding it) is dead-lettered on receipt, with that as its error. On a FIFO queue
//! a message group's messages go to the runner one at a time, in order; the publisher sets
//! `MessageGroupId` to the row's aggregate and `MessageDeduplicationId` to its id.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // The queue and its dead-letter queue (`orders-dlq`) must exist.
//! let source = oncely_sqs::SqsSource::connect(
//!     "sqs://sqs.eu-west-1.amazonaws.com/orders?visibility=60s&max_receives=5",
//! )
//! .await?;
//! # drop(source);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod error;
mod fresh;
mod options;
mod publisher;
mod source;

pub use error::{BROKER, Error};
pub use fresh::{FreshDestination, FreshOptions, fresh_destination};
pub use options::{SqsOptions, client, credentials};
pub use publisher::{MESSAGE_ID_ATTRIBUTE, SqsPublisher};
pub use source::{SqsDelivery, SqsSource};
