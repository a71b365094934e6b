//! Multi-step handlers that resume where they stopped ([`Oncely::run_steps`]).
//!
//! One claim makes a handler run once, but a handler that charges a card, then writes an
//! order, then sends an email has three effects: if it fails (or its process dies) after the
//! charge, the next delivery must not charge again, and must still write the order and send
//! the email. So each step's result is recorded when the step finishes, before the next one
//! starts; a later run of the same key gets the finished steps' results back without running
//! them, and runs only the rest.
//!
//! How it is kept: a step is itself a key, claimed and completed like any other
//! ([`Oncely::run`]) in the key's scope. Its key is derived from the key, the step's name and
//! the key's *run*: an id made by the first run that reaches its steps and kept, in a record of
//! its own, until the key is forgotten or the retention ends. Every store therefore keeps
//! steps as it keeps records, with the same guarantees: a step another run is doing is
//! `InProgress`, a finished one is replayed, and no two runs both do it.

use std::convert::Infallible;
use std::future::Future;

use crate::inbox::Inbox;
use crate::key::derive_uuid;
use crate::{Fingerprint, Key, Oncely, Result, RunError, RunOutcome, Scope, telemetry};

/// The tag of the keys steps are recorded under: never equal to a [`Key::derive`]d key.
const STEPS_TAG: &[u8] = b"oncely-steps-v1";

/// The steps of one run of a key, handed to the handler of [`Oncely::run_steps`].
///
/// Cheap to clone. Each [`step`](Steps::step) runs its work at most once per run of the key:
/// a step finished by an earlier attempt (one that failed later, or whose process died) is
/// answered from its record.
#[derive(Clone, Debug)]
pub struct Steps {
    oncely: Oncely,
    scope: Scope,
    key: Key,
    run: String,
}

impl Steps {
    /// The scope of the key being run; its steps are recorded in it too.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The key being run.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The key `step` is recorded under, in [`scope`](Self::scope): the same on every attempt
    /// of this run, another for the next run (after the key is forgotten or expired).
    ///
    /// For a step whose effect is in the same SQL database as the records, claim this key with
    /// [`inbox`](Self::inbox) inside the transaction that makes the effect.
    pub fn step_key(&self, step: &str) -> Key {
        derive_uuid(
            STEPS_TAG,
            &[
                "step",
                self.scope.as_str(),
                self.key.as_str(),
                &self.run,
                step,
            ],
        )
    }

    /// An inbox that records steps of this key in the caller's own SQL transaction: claim
    /// [`step_key(name)`](Self::step_key) with it, in the transaction that makes the step's
    /// effect, and store the step's result as its outcome (`record_outcome`). The effect and
    /// the step's record then commit together, and a later [`step`](Self::step) of that name
    /// answers the committed result. It keeps records as long as the [`Oncely`] that runs the
    /// steps, by its clock.
    pub fn inbox(&self) -> Inbox {
        Inbox::new(self.scope.clone())
            .with_retention(self.oncely.retention())
            .with_shared_clock(self.oncely.clock())
    }

    /// The idempotency key to send another service for `step`: [`Key::derive`] of the key.
    /// The same for every run, so a call that reached the service before a crash is not
    /// repeated there either.
    pub fn derive(&self, step: &str) -> Key {
        self.key.derive(&self.scope, step)
    }

    /// Runs `work` as the step `name`, unless this run of the key already finished it: then
    /// its recorded result is answered and `work` is not called.
    ///
    /// The rules are [`Oncely::run`]'s, for the step's own key: its result is recorded when
    /// `work` succeeds; an error releases the step, so the next attempt runs it again, unless
    /// the error is an [`OutcomeUnknown`](crate::OutcomeUnknown), which holds the step for its
    /// lease; another attempt doing the step answers `InProgress`.
    pub async fn step<F, Fut, E>(&self, name: &str, work: F) -> Result<Vec<u8>, RunError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, E>>,
        E: 'static,
    {
        let key = self.step_key(name);
        let outcome = self.oncely.run(&self.scope, &key, None, work).await?;
        let how = if outcome.was_replayed() {
            "replayed"
        } else {
            "executed"
        };
        metrics::counter!(telemetry::STEPS, "outcome" => how).increment(1);
        Ok(outcome.into_inner())
    }
}

impl Oncely {
    /// Like [`run`](Self::run), for a handler made of steps: each step's result is recorded
    /// before the next step starts, and a later run of the key (after the handler failed,
    /// panicked or its process died) replays the finished steps and runs only the rest.
    ///
    /// The handler gets the key's [`Steps`] and returns the final outcome, stored and replayed
    /// to duplicates as `run` does. A handler's error releases the key at once, as `run` does:
    /// the steps it finished stay recorded, so the retry redoes none of them. A step whose
    /// outcome is unknown stays held for its lease, so retries meanwhile answer `InProgress`.
    ///
    /// The steps belong to the key's run until it is completed and its retention ends, or it
    /// is [forgotten](Self::forget): a delivery after that runs every step again. A run whose
    /// next attempt comes later than the retention after a step also runs that step again.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), oncely_core::BoxError> {
    /// use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    /// use oncely_core::{BoxError, Key, Oncely, RunError, RunOutcome, Scope, Steps};
    /// # let oncely = Oncely::new(std::sync::Arc::new(oncely_memory::MemoryStore::default()));
    /// let (scope, order) = (Scope::new("orders")?, Key::new("order-42")?);
    /// let (charges, shipments) = (AtomicUsize::new(0), AtomicUsize::new(0));
    /// let fulfil = |steps: Steps| async {
    ///     let steps = steps;
    ///     let charge = steps
    ///         .step("charge", || async {
    ///             charges.fetch_add(1, SeqCst);
    ///             Ok::<_, BoxError>(b"ch_1".to_vec())
    ///         })
    ///         .await?;
    ///     steps
    ///         .step("ship", || async {
    ///             // The carrier is down on the first attempt.
    ///             if shipments.fetch_add(1, SeqCst) == 0 {
    ///                 return Err(BoxError::from("carrier unavailable"));
    ///             }
    ///             Ok(b"parcel-9".to_vec())
    ///         })
    ///         .await?;
    ///     Ok::<_, BoxError>(charge)
    /// };
    ///
    /// let first = oncely.run_steps(&scope, &order, None, fulfil).await;
    /// assert!(matches!(first, Err(RunError::Handler(_))));
    /// // The retry ships; the charge is the one recorded by the first attempt.
    /// let retry = oncely.run_steps(&scope, &order, None, fulfil).await?;
    /// assert_eq!(retry, RunOutcome::Executed(b"ch_1".to_vec()));
    /// assert_eq!((charges.load(SeqCst), shipments.load(SeqCst)), (1, 2));
    /// # Ok(()) }
    /// ```
    pub async fn run_steps<F, Fut, E>(
        &self,
        scope: &Scope,
        key: &Key,
        fingerprint: Option<Fingerprint>,
        handler: F,
    ) -> Result<RunOutcome, RunError<E>>
    where
        F: FnOnce(Steps) -> Fut,
        Fut: Future<Output = Result<Vec<u8>, E>>,
        E: 'static,
    {
        let claim = match self.claim_to_run(scope, key, fingerprint).await? {
            Ok(claim) => claim,
            Err(answered) => return Ok(answered),
        };
        let run = match self.current_run(scope, key).await {
            Ok(run) => run,
            Err(error) => {
                // No step ran: the key is free for the next delivery at once.
                let _ = self.release(&claim).await;
                return Err(error);
            }
        };
        let steps = Steps {
            oncely: self.clone(),
            scope: scope.clone(),
            key: key.clone(),
            run,
        };
        self.run_claimed(claim, handler(steps)).await
    }

    /// The id of the key's current run: the one recorded, or a new one recorded now. Only the
    /// holder of the key's claim calls this, so a new id is made once per run.
    async fn current_run<E>(&self, scope: &Scope, key: &Key) -> Result<String, RunError<E>> {
        let marker = run_marker(scope, key);
        let made = || async {
            let id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
            Ok::<_, Infallible>(id.into_bytes())
        };
        match self.run(scope, &marker, None, made).await {
            Ok(outcome) => Ok(String::from_utf8_lossy(&outcome.into_inner()).into_owned()),
            Err(RunError::Handler(never)) => match never {},
            Err(RunError::InProgress { retry_after }) => Err(RunError::InProgress { retry_after }),
            Err(RunError::Conflict { stored }) => Err(RunError::Conflict { stored }),
            Err(RunError::Panicked(panic)) => Err(RunError::Panicked(panic)),
            Err(RunError::Store(error)) => Err(RunError::Store(error)),
        }
    }

    /// Removes the record of the key's run, if any, so its next run starts with no steps.
    pub(crate) async fn forget_steps(&self, scope: &Scope, key: &Key) -> Result<()> {
        let marker = run_marker(scope, key);
        // Another turn only if the record changed between the read and the removal.
        while let Some(record) = telemetry::timed!("get", self.store().get(scope, &marker)).await? {
            if telemetry::timed!("forget", self.store().forget(scope, &marker, record.token))
                .await?
            {
                break;
            }
        }
        Ok(())
    }
}

/// The key of the record that holds (scope, key)'s current run id.
fn run_marker(scope: &Scope, key: &Key) -> Key {
    derive_uuid(STEPS_TAG, &["run", scope.as_str(), key.as_str()])
}
