//! What can go wrong setting a source or publisher up, or sending a message, each saying what to
//! do about it.

/// The broker's name in [`BrokerError`](oncely_core::consumer::BrokerError)s.
pub const BROKER: &str = "sqs";

/// Setting a source or publisher up failed, or a message cannot go to SQS as it is (the source
/// of the [`BrokerError`](oncely_core::consumer::BrokerError) a publish answers).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL cannot be used.
    #[error("invalid SQS URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// SQS refused or could not be reached.
    #[error("SQS at {endpoint}: {what}: {source}")]
    Sqs {
        /// The endpoint.
        endpoint: String,
        /// What was being done.
        what: String,
        /// The client's error.
        #[source]
        source: oncely_core::BoxError,
    },
    /// The queue does not exist (queues are not created here).
    #[error("no queue {queue} at {endpoint}: create it")]
    NoQueue {
        /// The queue's name.
        queue: String,
        /// The endpoint.
        endpoint: String,
    },
    /// The payload is not UTF-8: SQS message bodies are text, and a lossy conversion would
    /// change the data. Nothing was sent.
    #[error(
        "the payload for {queue} is not UTF-8 (invalid at byte {valid_up_to}): SQS bodies are text; encode it (base64, JSON) before it is enqueued"
    )]
    NotUtf8 {
        /// The queue it was for.
        queue: String,
        /// The length of its valid UTF-8 prefix.
        valid_up_to: usize,
    },
    /// The message's headers cannot be SQS message attributes. Nothing was sent.
    #[error("a message for {queue} cannot be sent: {reason}")]
    Unsendable {
        /// The queue it was for.
        queue: String,
        /// Why.
        reason: String,
    },
}

/// `error` and its causes on one line: [`oncely_aws::describe`].
pub(crate) fn describe(error: &dyn std::error::Error) -> String {
    oncely_aws::describe(error)
}
