//! The timestamp oracle as an interface: [`Oracle`], served by a connected [`Cluster`] (PD's
//! TSO), by a [`LocalOracle`] reading a caller-supplied clock (for tests and tools that run
//! without PD), or by a [`MockOracle`] (a local oracle that tests can stop and move ahead).
//!
//! Mirrors client-go `oracle/oracle.go` `Oracle` and `ReadTSValidator` (the global transaction
//! scope only: client-go's `Option.TxnScope` has no other value with a single TSO), with
//! `oracle/oracles/pd.go` behind [`Cluster`], `oracle/oracles/local.go` behind
//! [`LocalOracle`] and `oracle/oracles/mock.go` behind [`MockOracle`]. client-go's `...Async` variants are the futures themselves here.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::cluster::Cluster;
use super::runtime::Runtime;
use super::sync::lock;
use crate::error::Error;
use crate::machine::Timestamp;
use crate::machine::read_ts::ReadTsCheck;
use crate::machine::tso::{lock_is_expired, lock_until_expired};

/// A source of timestamps and the checks built on them. Mirrors client-go `oracle.Oracle`.
pub trait Oracle: Send + Sync {
    /// A fresh timestamp, greater than every one handed out before. Mirrors `GetTimestamp`
    /// (and `GetTimestampAsync`).
    fn timestamp(&self) -> impl Future<Output = Result<Timestamp, Error>> + Send;

    /// A recent timestamp without a round trip (it may lag). Mirrors
    /// `GetLowResolutionTimestamp` (and its `Async` variant).
    fn low_resolution_timestamp(&self) -> Result<Timestamp, Error>;

    /// Sets how often the low-resolution timestamp is refreshed. Mirrors
    /// `SetLowResolutionTimestampUpdateInterval`.
    fn set_low_resolution_timestamp_update_interval(&self, interval: Duration)
    -> Result<(), Error>;

    /// A timestamp standing for about `prev_seconds` ago, estimated locally; not guaranteed
    /// readable. Mirrors `GetStaleTimestamp`.
    fn stale_timestamp(
        &self,
        prev_seconds: u64,
    ) -> impl Future<Output = Result<Timestamp, Error>> + Send;

    /// Whether a lock written at `lock_ts` with a TTL of `ttl_ms` has expired. Mirrors
    /// `IsExpired`.
    fn is_expired(&self, lock_ts: Timestamp, ttl_ms: u64) -> bool;

    /// Milliseconds until that lock expires (negative once expired). Mirrors `UntilExpired`.
    fn until_expired(&self, lock_ts: Timestamp, ttl_ms: u64) -> i64;

    /// Checks that reading at `read_ts` cannot see data the TSO has not allocated yet
    /// (`stale_read`: a stale read, which may not read at the latest, `u64::MAX`). Mirrors
    /// `ReadTSValidator.ValidateReadTS`.
    fn validate_read_ts(
        &self,
        read_ts: Timestamp,
        stale_read: bool,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// The external timestamp (zero until set). Mirrors `GetExternalTimestamp`.
    fn external_timestamp(&self) -> impl Future<Output = Result<Timestamp, Error>> + Send;

    /// Sets the external timestamp, which may not pass the TSO nor go back. Mirrors
    /// `SetExternalTimestamp`.
    fn set_external_timestamp(
        &self,
        ts: Timestamp,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// The smallest timestamp of all TSO keyspace groups. Mirrors
    /// `GetAllTSOKeyspaceGroupMinTS`.
    fn all_tso_keyspace_group_min_ts(
        &self,
    ) -> impl Future<Output = Result<Timestamp, Error>> + Send;
}

impl<R: Runtime> Cluster<R> {
    /// Whether a lock written at `lock_ts` with a TTL of `ttl_ms` has expired by the last
    /// timestamp this client fetched (true when it has fetched none). Mirrors client-go
    /// `pdOracle.IsExpired`.
    pub fn is_expired(&self, lock_ts: Timestamp, ttl_ms: u64) -> bool {
        lock_is_expired(
            self.low_resolution_timestamp().ok(),
            lock_ts.version(),
            ttl_ms,
        )
    }

    /// Milliseconds until a lock written at `lock_ts` with a TTL of `ttl_ms` expires by the
    /// last timestamp this client fetched (negative once expired, 0 when it has fetched none).
    /// Mirrors client-go `pdOracle.UntilExpired`.
    pub fn until_expired(&self, lock_ts: Timestamp, ttl_ms: u64) -> i64 {
        lock_until_expired(
            self.low_resolution_timestamp().ok(),
            lock_ts.version(),
            ttl_ms,
        )
    }

    /// Checks a read timestamp before reading at it, when [`crate::config::Config`]'s
    /// `enable_ts_validation` is on (always `Ok` otherwise): `read_ts` must not be ahead of
    /// what the TSO has allocated. A timestamp not known to be behind the last one fetched is
    /// compared with a fresh one, twice at most (the first may come from a call that started
    /// earlier); reads at `i64::MAX..u64::MAX` and stale reads at `u64::MAX` are refused with
    /// [`Error::InvalidArgument`]. A stale read also tunes the low-resolution refresh period
    /// (see [`Cluster::report_stale_read`]). Mirrors client-go `pdOracle.ValidateReadTS`.
    pub async fn validate_read_ts(
        &self,
        read_ts: Timestamp,
        stale_read: bool,
    ) -> Result<(), Error> {
        let mut check = self.with_shared(|s| s.read_ts.check(read_ts.version(), stale_read));
        let mut retried = false;
        let result = loop {
            match check {
                ReadTsCheck::Valid => break Ok(()),
                ReadTsCheck::Invalid(err) => break Err(err),
                ReadTsCheck::FetchCurrent => {
                    let current = match self.timestamp().await {
                        Ok(ts) => ts,
                        Err(err) => break Err(err),
                    };
                    check = self.with_shared(|s| {
                        s.read_ts.check_against(
                            read_ts.version(),
                            current.version(),
                            retried,
                            stale_read,
                        )
                    });
                    retried = true;
                }
            }
        };
        for (read, current) in self.with_shared(|s| s.read_ts.take_stale_reads()) {
            self.report_stale_read(Timestamp(read), current.map(Timestamp));
        }
        result
    }
}

impl<R: Runtime> Oracle for Cluster<R> {
    fn timestamp(&self) -> impl Future<Output = Result<Timestamp, Error>> + Send {
        Cluster::timestamp(self)
    }

    fn low_resolution_timestamp(&self) -> Result<Timestamp, Error> {
        Cluster::low_resolution_timestamp(self)
    }

    fn set_low_resolution_timestamp_update_interval(
        &self,
        interval: Duration,
    ) -> Result<(), Error> {
        Cluster::set_low_resolution_timestamp_update_interval(self, interval)
    }

    fn stale_timestamp(
        &self,
        prev_seconds: u64,
    ) -> impl Future<Output = Result<Timestamp, Error>> + Send {
        Cluster::stale_timestamp(self, prev_seconds)
    }

    fn is_expired(&self, lock_ts: Timestamp, ttl_ms: u64) -> bool {
        Cluster::is_expired(self, lock_ts, ttl_ms)
    }

    fn until_expired(&self, lock_ts: Timestamp, ttl_ms: u64) -> i64 {
        Cluster::until_expired(self, lock_ts, ttl_ms)
    }

    fn validate_read_ts(
        &self,
        read_ts: Timestamp,
        stale_read: bool,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        Cluster::validate_read_ts(self, read_ts, stale_read)
    }

    fn external_timestamp(&self) -> impl Future<Output = Result<Timestamp, Error>> + Send {
        Cluster::external_timestamp(self)
    }

    fn set_external_timestamp(
        &self,
        ts: Timestamp,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        Cluster::set_external_timestamp(self, ts)
    }

    fn all_tso_keyspace_group_min_ts(
        &self,
    ) -> impl Future<Output = Result<Timestamp, Error>> + Send {
        Cluster::all_tso_keyspace_group_min_ts(self)
    }
}

/// An oracle reading a clock instead of PD: timestamps are the clock's milliseconds, with the
/// logical part counting calls within one millisecond. For tests and tools without PD; the
/// clock is the caller's (`SystemTime::now` for real time, a fake one for tests). Mirrors
/// client-go `oracle/oracles/local.go` `NewLocalOracle` (with its test hook as the clock).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tikv_core::client::oracle::{LocalOracle, Oracle};
/// let oracle = LocalOracle::new(|| SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
/// let a = futures_lite::future::block_on(oracle.timestamp()).unwrap();
/// let b = futures_lite::future::block_on(oracle.timestamp()).unwrap();
/// assert_eq!(a.physical_ms(), 1_700_000_000_000);
/// assert_eq!(b.version(), a.version() + 1);
/// ```
pub struct LocalOracle {
    clock: Arc<dyn Fn() -> SystemTime + Send + Sync>,
    state: Mutex<LocalState>,
}

#[derive(Debug, Default)]
struct LocalState {
    /// The clock's timestamp at the last call, and the calls since within that millisecond.
    last: u64,
    n: u64,
    /// The external timestamp (client-go `localExternalTimestamp`).
    external: u64,
}

impl std::fmt::Debug for LocalOracle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalOracle")
            .field("state", &*lock(&self.state))
            .finish_non_exhaustive()
    }
}

impl LocalOracle {
    /// An oracle reading `clock`.
    pub fn new(clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        LocalOracle {
            clock: Arc::new(clock),
            state: Mutex::default(),
        }
    }

    /// The clock's time as a timestamp with a zero logical part (`Timestamp::from_system_time`,
    /// client-go `GoTimeToTS`); a clock before 1970 or past the timestamp range is
    /// [`Error::InvalidArgument`].
    fn clock_ts(&self) -> Result<Timestamp, Error> {
        Timestamp::from_system_time((self.clock)())
    }

    /// The clock in milliseconds since the Unix epoch, negative before it (client-go
    /// `GetPhysical`, for lock expiry).
    fn clock_ms(&self) -> i128 {
        match (self.clock)().duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => d.as_millis() as i128,
            Err(e) => -(e.duration().as_millis() as i128),
        }
    }

    /// The next timestamp: the clock's, or one more than the last within the same
    /// millisecond. Mirrors client-go `localOracle.GetTimestamp`.
    fn next(&self) -> Result<Timestamp, Error> {
        let ts = self.clock_ts()?.version();
        let mut st = lock(&self.state);
        if st.last == ts {
            st.n += 1;
            return Ok(Timestamp(ts + st.n));
        }
        st.last = ts;
        st.n = 0;
        Ok(Timestamp(ts))
    }
}

/// The timestamp `prev_seconds` before `now` (zero logical part); before 1970 or past the
/// timestamp range it is [`Error::InvalidArgument`]. Mirrors client-go
/// `localOracle.GetStaleTimestamp` / `MockOracle.GetStaleTimestamp`.
fn stale_ts_before(now: SystemTime, prev_seconds: u64) -> Result<Timestamp, Error> {
    now.checked_sub(Duration::from_secs(prev_seconds))
        .ok_or_else(|| Error::invalid("stale timestamp before the clock's range"))
        .and_then(Timestamp::from_system_time)
}

impl Oracle for LocalOracle {
    fn timestamp(&self) -> impl Future<Output = Result<Timestamp, Error>> + Send {
        let ts = self.next();
        async move { ts }
    }

    /// A fresh timestamp: a local oracle has no cache to lag.
    fn low_resolution_timestamp(&self) -> Result<Timestamp, Error> {
        self.next()
    }

    /// Nothing to refresh: accepted and ignored, like client-go's.
    fn set_low_resolution_timestamp_update_interval(&self, _: Duration) -> Result<(), Error> {
        Ok(())
    }

    fn stale_timestamp(
        &self,
        prev_seconds: u64,
    ) -> impl Future<Output = Result<Timestamp, Error>> + Send {
        let ts = stale_ts_before((self.clock)(), prev_seconds);
        async move { ts }
    }

    /// Whether the clock has reached the lock's physical time plus its TTL.
    fn is_expired(&self, lock_ts: Timestamp, ttl_ms: u64) -> bool {
        self.until_expired(lock_ts, ttl_ms) <= 0
    }

    fn until_expired(&self, lock_ts: Timestamp, ttl_ms: u64) -> i64 {
        let expiry = i128::from(lock_ts.physical_ms()) + i128::from(ttl_ms);
        (expiry - self.clock_ms()).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    /// Always fine: a local oracle does not validate (client-go's neither).
    async fn validate_read_ts(&self, _: Timestamp, _: bool) -> Result<(), Error> {
        Ok(())
    }

    /// Zero until one is set. Mirrors client-go `localOracle.GetExternalTimestamp`.
    async fn external_timestamp(&self) -> Result<Timestamp, Error> {
        Ok(Timestamp(lock(&self.state).external))
    }

    /// Refused with [`Error::InvalidArgument`] when `ts` is ahead of a fresh timestamp or
    /// below the one already set (setting the same one again is fine). Mirrors client-go
    /// `localExternalTimestamp.setExternalTimestamp`.
    async fn set_external_timestamp(&self, ts: Timestamp) -> Result<(), Error> {
        let current = self.next()?;
        if ts > current {
            return Err(Error::invalid(
                "external timestamp is greater than global tso",
            ));
        }
        let mut st = lock(&self.state);
        if st.external > ts.version() {
            return Err(Error::invalid("cannot decrease the external timestamp"));
        }
        st.external = ts.version();
        Ok(())
    }

    /// The clock's time as a timestamp. Mirrors client-go
    /// `localOracle.GetAllTSOKeyspaceGroupMinTS`.
    async fn all_tso_keyspace_group_min_ts(&self) -> Result<Timestamp, Error> {
        self.clock_ts()
    }
}

/// A [`LocalOracle`] for tests that can be stopped and moved ahead of its clock. Mirrors
/// client-go `oracle/oracles/mock.go` `MockOracle` (`Enable`, `Disable`, `AddOffset`).
///
/// While disabled, fresh timestamps (and the low-resolution and minimum ones, which are fresh
/// here too) fail with [`Error::Pd`], like a TSO that cannot be reached. The offset moves the
/// clock every timestamp and every lock-expiry check reads, as client-go's does; stale
/// timestamps read the clock without it, as client-go's `GetStaleTimestamp` does.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tikv_core::client::{MockOracle, Oracle};
///
/// let oracle = MockOracle::new(SystemTime::now);
/// let ts = futures_lite::future::block_on(oracle.timestamp()).unwrap();
/// // A lock of 10 s written now expires once the oracle is 10 s ahead.
/// assert!(!oracle.is_expired(ts, 10_000));
/// oracle.add_offset(Duration::from_secs(10));
/// assert!(oracle.is_expired(ts, 10_000));
/// oracle.disable();
/// assert!(futures_lite::future::block_on(oracle.timestamp()).is_err());
/// ```
pub struct MockOracle {
    inner: LocalOracle,
    clock: Arc<dyn Fn() -> SystemTime + Send + Sync>,
    offset: Arc<Mutex<Duration>>,
    stopped: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for MockOracle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockOracle")
            .field("offset", &*lock(&self.offset))
            .field("stopped", &self.is_stopped())
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl MockOracle {
    /// An enabled oracle reading `clock`, with no offset.
    pub fn new(clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        let clock: Arc<dyn Fn() -> SystemTime + Send + Sync> = Arc::new(clock);
        let offset = Arc::new(Mutex::new(Duration::ZERO));
        let (read, shift) = (clock.clone(), offset.clone());
        MockOracle {
            inner: LocalOracle::new(move || read() + *lock(&shift)),
            clock,
            offset,
            stopped: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Hands out timestamps again. Mirrors client-go `MockOracle.Enable`.
    pub fn enable(&self) {
        self.stopped
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// Fails every fresh timestamp until [`MockOracle::enable`]. Mirrors client-go
    /// `MockOracle.Disable`.
    pub fn disable(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Moves the oracle's clock `d` further ahead. Mirrors client-go `MockOracle.AddOffset`.
    pub fn add_offset(&self, d: Duration) {
        let mut offset = lock(&self.offset);
        *offset = offset.saturating_add(d);
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::Acquire)
    }

    /// `Ok` while enabled; client-go returns its `errStopped`.
    fn running(&self) -> Result<(), Error> {
        if self.is_stopped() {
            return Err(Error::Pd("mock oracle is stopped".into()));
        }
        Ok(())
    }
}

impl Oracle for MockOracle {
    fn timestamp(&self) -> impl Future<Output = Result<Timestamp, Error>> + Send {
        let ts = self.running().and_then(|()| self.inner.next());
        async move { ts }
    }

    /// A fresh timestamp, like client-go's (`GetLowResolutionTimestamp` calls `GetTimestamp`).
    fn low_resolution_timestamp(&self) -> Result<Timestamp, Error> {
        self.running()?;
        self.inner.next()
    }

    /// Accepted and ignored, like client-go's.
    fn set_low_resolution_timestamp_update_interval(&self, _: Duration) -> Result<(), Error> {
        Ok(())
    }

    /// `prev_seconds` before the clock, without the offset (client-go `GetStaleTimestamp`).
    fn stale_timestamp(
        &self,
        prev_seconds: u64,
    ) -> impl Future<Output = Result<Timestamp, Error>> + Send {
        let ts = stale_ts_before((self.clock)(), prev_seconds);
        async move { ts }
    }

    /// Against the clock moved by the offset.
    fn is_expired(&self, lock_ts: Timestamp, ttl_ms: u64) -> bool {
        self.inner.is_expired(lock_ts, ttl_ms)
    }

    fn until_expired(&self, lock_ts: Timestamp, ttl_ms: u64) -> i64 {
        self.inner.until_expired(lock_ts, ttl_ms)
    }

    /// Always fine, like client-go's.
    async fn validate_read_ts(&self, _: Timestamp, _: bool) -> Result<(), Error> {
        Ok(())
    }

    async fn external_timestamp(&self) -> Result<Timestamp, Error> {
        self.inner.external_timestamp().await
    }

    /// [`LocalOracle`]'s rules against a fresh timestamp, which fails while disabled.
    async fn set_external_timestamp(&self, ts: Timestamp) -> Result<(), Error> {
        self.running()?;
        self.inner.set_external_timestamp(ts).await
    }

    /// The clock moved by the offset as a timestamp; fails while disabled. Mirrors client-go
    /// `MockOracle.GetAllTSOKeyspaceGroupMinTS`.
    async fn all_tso_keyspace_group_min_ts(&self) -> Result<Timestamp, Error> {
        self.running()?;
        self.inner.all_tso_keyspace_group_min_ts().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn fake_clock() -> (Arc<AtomicU64>, LocalOracle) {
        let ms = Arc::new(AtomicU64::new(1_700_000_000_000));
        let read = ms.clone();
        let oracle = LocalOracle::new(move || {
            SystemTime::UNIX_EPOCH + Duration::from_millis(read.load(Ordering::Relaxed))
        });
        (ms, oracle)
    }

    #[test]
    fn local_oracle_counts_within_a_millisecond_and_follows_the_clock() {
        let (ms, oracle) = fake_clock();
        let a = block_on(oracle.timestamp()).unwrap();
        let b = block_on(oracle.timestamp()).unwrap();
        assert_eq!(a, Timestamp::compose(1_700_000_000_000, 0));
        assert_eq!(b.version(), a.version() + 1);
        ms.store(1_700_000_000_005, Ordering::Relaxed);
        let c = oracle.low_resolution_timestamp().unwrap();
        assert_eq!(c, Timestamp::compose(1_700_000_000_005, 0));
        let stale = block_on(oracle.stale_timestamp(2)).unwrap();
        assert_eq!(stale, Timestamp::compose(1_699_999_998_005, 0));
        // A lock of 10 ms written at `a`: 5 ms in, 5 ms left; at 10 ms, expired.
        assert_eq!(oracle.until_expired(a, 10), 5);
        assert!(!oracle.is_expired(a, 10));
        ms.store(1_700_000_000_010, Ordering::Relaxed);
        assert!(oracle.is_expired(a, 10));
        assert_eq!(oracle.until_expired(a, 3), -7);
        assert!(block_on(oracle.validate_read_ts(Timestamp(u64::MAX), true)).is_ok());
    }

    #[test]
    fn local_external_timestamp_follows_client_go_rules() {
        let (ms, oracle) = fake_clock();
        assert_eq!(block_on(oracle.external_timestamp()).unwrap(), Timestamp(0));
        let now = Timestamp::compose(1_700_000_000_000, 0);
        block_on(oracle.set_external_timestamp(now)).unwrap();
        block_on(oracle.set_external_timestamp(now)).unwrap();
        assert_eq!(block_on(oracle.external_timestamp()).unwrap(), now);
        // Ahead of the clock, or backwards: refused.
        let ahead = Timestamp::compose(1_700_000_000_001, 0);
        assert!(matches!(
            block_on(oracle.set_external_timestamp(ahead)),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            block_on(oracle.set_external_timestamp(Timestamp(1))),
            Err(Error::InvalidArgument(_))
        ));
        ms.store(1_700_000_000_001, Ordering::Relaxed);
        block_on(oracle.set_external_timestamp(ahead)).unwrap();
        assert_eq!(
            block_on(oracle.all_tso_keyspace_group_min_ts()).unwrap(),
            ahead
        );
    }

    #[test]
    fn mock_oracle_stops_and_moves_ahead_like_client_go() {
        let ms = Arc::new(AtomicU64::new(1_700_000_000_000));
        let read = ms.clone();
        let oracle = MockOracle::new(move || {
            SystemTime::UNIX_EPOCH + Duration::from_millis(read.load(Ordering::Relaxed))
        });
        let a = block_on(oracle.timestamp()).unwrap();
        let b = block_on(oracle.timestamp()).unwrap();
        assert_eq!(a, Timestamp::compose(1_700_000_000_000, 0));
        assert_eq!(
            b.version(),
            a.version() + 1,
            "the same millisecond counts up"
        );
        // Disabled: fresh, low-resolution and minimum timestamps fail; stale ones and lock
        // checks still work.
        oracle.disable();
        assert!(matches!(block_on(oracle.timestamp()), Err(Error::Pd(_))));
        assert!(oracle.low_resolution_timestamp().is_err());
        assert!(block_on(oracle.all_tso_keyspace_group_min_ts()).is_err());
        assert!(block_on(oracle.set_external_timestamp(a)).is_err());
        assert!(block_on(oracle.stale_timestamp(1)).is_ok());
        assert!(!oracle.is_expired(a, 10));
        oracle.enable();
        // The offset moves timestamps and lock expiry, not stale timestamps.
        oracle.add_offset(Duration::from_millis(10));
        assert!(oracle.is_expired(a, 10));
        assert_eq!(oracle.until_expired(a, 15), 5);
        let c = block_on(oracle.timestamp()).unwrap();
        assert_eq!(c, Timestamp::compose(1_700_000_000_010, 0));
        assert_eq!(
            block_on(oracle.stale_timestamp(1)).unwrap(),
            Timestamp::compose(1_699_999_999_000, 0)
        );
        assert_eq!(
            block_on(oracle.all_tso_keyspace_group_min_ts()).unwrap(),
            Timestamp::compose(1_700_000_000_010, 0)
        );
        // The external timestamp follows the local rules against the moved clock.
        block_on(oracle.set_external_timestamp(c)).unwrap();
        assert_eq!(block_on(oracle.external_timestamp()).unwrap(), c);
        ms.fetch_add(1, Ordering::Relaxed);
        assert!(block_on(oracle.timestamp()).unwrap() > c);
    }
}
