//! Time as the lifecycle sees it: millisecond timestamps from an injectable clock.
//!
//! Every lease and retention decision is taken against [`Clock::now`], and the clock is passed
//! to the stores rather than read inside them. Tests move a [`ManualClock`] instead of sleeping,
//! so a 7-day retention is tested in microseconds.
//!
//! Hosts disagree about the time, so an [`Oncely`](crate::Oncely) on a store that many hosts
//! share (PostgreSQL, MySQL, Redis) reads the store server's clock
//! ([`Store::server_time`](crate::Store::server_time)) and decides by it: its own clock plus the
//! offset it measured, measured again every [`CLOCK_RESYNC`]. Two gateways whose clocks are 30 s
//! apart then still agree on when a lease ends.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(i64);

impl Timestamp {
    /// From milliseconds since the Unix epoch.
    pub const fn from_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// `self + d`, saturating at the far future rather than overflowing.
    pub fn saturating_add(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(duration_millis(d)))
    }

    /// `self - d`, saturating.
    pub fn saturating_sub(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_sub(duration_millis(d)))
    }

    /// How long from `self` until `later`; zero if `later` is not after `self`.
    pub fn until(self, later: Timestamp) -> Duration {
        Duration::from_millis(later.0.saturating_sub(self.0).max(0) as u64)
    }
}

fn duration_millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A source of the current time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now.
    fn now(&self) -> Timestamp;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Timestamp(duration_millis(since))
    }
}

/// A clock that only moves when told to: leases and retention in tests without sleeping.
///
/// Clones share one time, so a test can hold one handle and give another to [`Oncely`](crate::Oncely).
///
/// ```
/// use std::time::Duration;
/// use oncely_core::{Clock, ManualClock, Timestamp};
///
/// let clock = ManualClock::new(Timestamp::from_millis(1_000));
/// clock.advance(Duration::from_secs(3600));
/// assert_eq!(clock.now().as_millis(), 3_601_000);
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: Timestamp) -> Self {
        ManualClock(Arc::new(AtomicI64::new(start.0)))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(duration_millis(by), Ordering::SeqCst);
    }

    /// Sets the clock.
    pub fn set(&self, to: Timestamp) {
        self.0.store(to.0, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    /// Starts at 2026-01-01T00:00:00Z, far from zero so subtraction never goes negative.
    fn default() -> Self {
        ManualClock::new(Timestamp(1_767_225_600_000))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

/// How often an [`Oncely`](crate::Oncely) that follows its store's clock measures the offset
/// to it again: a clock stepped by NTP is followed within this long.
pub const CLOCK_RESYNC: Duration = Duration::from_secs(30);

/// The offset from a host's clock to its store server's, shared by an instance's clones.
#[derive(Debug, Default)]
pub(crate) struct StoreOffset {
    /// Server minus host, in ms.
    offset: AtomicI64,
    /// Host time (ms) of the next measurement.
    next: AtomicI64,
    measured: AtomicBool,
    /// The store has no clock of its own: its clients share the host's.
    host_only: AtomicBool,
}

/// What the caller of [`StoreOffset::due`] is to do.
pub(crate) enum Measure {
    /// Nothing: the offset is fresh (or there is none to take).
    No,
    /// Measure before deciding anything: there is no offset yet.
    First,
    /// Measure again; the current offset may be used meanwhile.
    Again,
}

impl StoreOffset {
    pub(crate) fn offset(&self) -> i64 {
        self.offset.load(Ordering::Acquire)
    }

    /// Whether to measure at host time `now`. Of concurrent callers once an offset exists, one
    /// is told to measure again, the others go on with the offset they have.
    pub(crate) fn due(&self, now: Timestamp) -> Measure {
        if self.host_only.load(Ordering::Acquire) {
            return Measure::No;
        }
        if !self.measured.load(Ordering::Acquire) {
            return Measure::First;
        }
        let next = self.next.load(Ordering::Acquire);
        if now.0 >= next
            && self
                .next
                .compare_exchange(
                    next,
                    now.0.saturating_add(duration_millis(CLOCK_RESYNC)),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        {
            return Measure::Again;
        }
        Measure::No
    }

    /// Records a reading of the server's clock taken between host times `before` and `after`
    /// (`None`: the store has no clock of its own). Answers the offset.
    pub(crate) fn record(
        &self,
        before: Timestamp,
        server: Option<Timestamp>,
        after: Timestamp,
    ) -> i64 {
        let Some(server) = server else {
            self.host_only.store(true, Ordering::Release);
            return 0;
        };
        // The server read its clock somewhere in the round trip: its middle is the best guess.
        let midpoint = before.0 + (after.0 - before.0) / 2;
        let offset = server.0 - midpoint;
        self.offset.store(offset, Ordering::Release);
        self.next.store(
            after.0.saturating_add(duration_millis(CLOCK_RESYNC)),
            Ordering::Release,
        );
        self.measured.store(true, Ordering::Release);
        offset
    }
}
