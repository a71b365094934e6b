//! For store and broker authors: what a store or a broker of your own implements, and the rules
//! every store shares. An application does not need this module.
//!
//! | you write | you implement | with |
//! |---|---|---|
//! | a store | [`Store`] (with [`async_trait`]) over [`ClaimRequest`], [`Completion`] and the records | [`lifecycle`] (the claim / complete / release decisions, written once), [`batch`] (a batch of claims in one SQL transaction), [`group`] (group commit), [`RecordRow`] (a record as SQL columns), [`new_token`], [`url`] (URL parameters, passwords kept out of messages) |
//! | the inbox on a SQL store | [`InboxTransaction`] for your connection type | [`Inbox::claim_in`](crate::inbox::Inbox::claim_in) |
//! | the outbox on a SQL store | [`OutboxTransaction`], and [`OutboxStore`] + [`OutboxBatch`] for the relay | [`Outbox::enqueue_in`](crate::outbox::Outbox::enqueue_in), [`OutboxRow`], [`encode_headers`] / [`decode_headers`] |
//! | a broker's consumer side | [`Source`] and [`Delivery`] | [`Message`], [`Position`], [`DeadLetter`], [`BrokerError`], [`panic`](mod@panic) |
//! | a broker's relay side | [`Publisher`] | [`message_id`](crate::outbox::message_id) |
//!
//! Every store must pass the one behaviour suite, `oncely-conformance` (and every broker the
//! consumer contract's). The stores and brokers of this repository depend on `oncely-core`
//! directly, which has these same items under the same names.

pub use oncely_core::{batch, group, lifecycle, panic, url};

pub use oncely_core::{
    ClaimRequest, Completion, GroupCommit, PURGE_KEY, PURGE_LEASE, PURGE_SCOPE, RecordRow, Store,
    async_trait, new_token,
};

pub use oncely_core::consumer::{
    BrokerError, DeadLetter, Delivery, Message, OffsetStore, Position, Source,
};
pub use oncely_core::inbox::InboxTransaction;
pub use oncely_core::outbox::{
    OutboxBatch, OutboxRow, OutboxStore, OutboxTransaction, Publisher, decode_headers,
    encode_headers,
};
