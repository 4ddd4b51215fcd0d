//! Data types of the percolator engine: timestamps, locks, write records,
//! mutations and the lock information handed back to clients.
//!
//! These follow TiKV's `components/txn_types/src/{lock,write,types,timestamp}.rs`
//! field for field (minus the on-disk byte encoding, which an in-memory engine
//! does not need), so that every rule of the actions can be written the way
//! TiKV writes it.

/// Number of bits of the logical part of a TSO timestamp.
///
/// Mirrors TiKV `components/txn_types/src/timestamp.rs` `TSO_PHYSICAL_SHIFT_BITS`.
pub const TSO_PHYSICAL_SHIFT_BITS: u32 = 18;

/// Values up to this many bytes are embedded in the lock / write record
/// instead of the default column family.
///
/// Mirrors TiKV `components/txn_types/src/types.rs` `SHORT_VALUE_MAX_LEN`.
pub const SHORT_VALUE_MAX_LEN: usize = 255;

/// The short value a protected rollback record carries.
///
/// Mirrors TiKV `components/txn_types/src/write.rs` `PROTECTED_ROLLBACK_SHORT_VALUE`.
pub const PROTECTED_ROLLBACK_SHORT_VALUE: &[u8] = b"p";

/// Physical part (milliseconds) of a TSO timestamp.
///
/// Mirrors TiKV `TimeStamp::physical`.
pub fn physical(ts: u64) -> u64 {
    ts >> TSO_PHYSICAL_SHIFT_BITS
}

/// Builds a TSO timestamp from its physical (milliseconds) and logical parts.
///
/// Mirrors TiKV `TimeStamp::compose`.
pub fn compose_ts(physical: u64, logical: u64) -> u64 {
    (physical << TSO_PHYSICAL_SHIFT_BITS) + logical
}

/// Whether a value is embedded in the lock / write record.
///
/// Mirrors TiKV `components/txn_types/src/types.rs` `is_short_value`.
pub fn is_short_value(value: &[u8]) -> bool {
    value.len() <= SHORT_VALUE_MAX_LEN
}

/// Operation codes, numbered like `kvrpcpb.Op`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Write a value.
    Put = 0,
    /// Delete the key.
    Del = 1,
    /// Lock the key without changing it (`SELECT ... FOR UPDATE` in an optimistic txn).
    Lock = 2,
    /// Rollback marker (not a valid mutation).
    Rollback = 3,
    /// Write a value; the key must not exist.
    Insert = 4,
    /// Pessimistic lock (only in pessimistic lock requests and lock infos).
    PessimisticLock = 5,
    /// Check that the key does not exist, write nothing.
    CheckNotExists = 6,
    /// Shared lock: the prewrite of a key held with a shared pessimistic lock, and the
    /// `lock_type` of the wrapper lock info that lists a key's shared holders.
    SharedLock = 7,
    /// Shared pessimistic lock (only in pessimistic lock requests).
    SharedPessimisticLock = 8,
}

impl Op {
    /// Decodes the wire value of `kvrpcpb.Op`.
    pub fn from_i32(v: i32) -> Option<Op> {
        Some(match v {
            0 => Op::Put,
            1 => Op::Del,
            2 => Op::Lock,
            3 => Op::Rollback,
            4 => Op::Insert,
            5 => Op::PessimisticLock,
            6 => Op::CheckNotExists,
            7 => Op::SharedLock,
            8 => Op::SharedPessimisticLock,
            _ => return None,
        })
    }
}

/// Assertion attached to a mutation, numbered like `kvrpcpb.Assertion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Assertion {
    /// No assertion.
    #[default]
    None = 0,
    /// The key must exist.
    Exist = 1,
    /// The key must not exist.
    NotExist = 2,
}

impl Assertion {
    /// Decodes the wire value; unknown values are treated as `None` like prost does.
    pub fn from_i32(v: i32) -> Assertion {
        match v {
            1 => Assertion::Exist,
            2 => Assertion::NotExist,
            _ => Assertion::None,
        }
    }
}

/// Assertion level of a prewrite, numbered like `kvrpcpb.AssertionLevel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AssertionLevel {
    /// No assertion.
    #[default]
    Off = 0,
    /// Assert only when the write record was loaded anyway.
    Fast = 1,
    /// Always assert.
    Strict = 2,
}

impl AssertionLevel {
    /// Decodes the wire value; unknown values fall back to `Off`.
    pub fn from_i32(v: i32) -> AssertionLevel {
        match v {
            1 => AssertionLevel::Fast,
            2 => AssertionLevel::Strict,
            _ => AssertionLevel::Off,
        }
    }
}

/// Isolation level of a read, numbered like `kvrpcpb.IsolationLevel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IsolationLevel {
    /// Snapshot isolation: locks older than the read ts block the read.
    #[default]
    Si = 0,
    /// Read committed: locks are ignored.
    Rc = 1,
    /// Read committed, failing on newer versions (`RCCheckTS`).
    RcCheckTs = 2,
}

impl IsolationLevel {
    /// Decodes the wire value; unknown values fall back to `Si`.
    pub fn from_i32(v: i32) -> IsolationLevel {
        match v {
            1 => IsolationLevel::Rc,
            2 => IsolationLevel::RcCheckTs,
            _ => IsolationLevel::Si,
        }
    }
}

/// What a pessimistic prewrite must check for one key, numbered like
/// `kvrpcpb.PrewriteRequest.PessimisticAction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PessimisticAction {
    /// The key is not pessimistically locked; no extra check.
    #[default]
    SkipPessimisticCheck = 0,
    /// The key must hold this txn's pessimistic lock (amended if missing).
    DoPessimisticCheck = 1,
    /// Constraint checks were deferred to prewrite.
    DoConstraintCheck = 2,
}

impl PessimisticAction {
    /// Decodes the wire value; unknown values fall back to `SkipPessimisticCheck`.
    pub fn from_i32(v: i32) -> PessimisticAction {
        match v {
            1 => PessimisticAction::DoPessimisticCheck,
            2 => PessimisticAction::DoConstraintCheck,
            _ => PessimisticAction::SkipPessimisticCheck,
        }
    }
}

/// Where the last data change (`Put`/`Delete`) of a key is, relative to a
/// `Lock`/`Rollback` record.
///
/// Mirrors TiKV `components/txn_types/src/types.rs` `LastChange`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LastChange {
    /// Not recorded.
    #[default]
    Unknown,
    /// The last change was committed at `last_change_ts`, this many versions back.
    Exist {
        /// Commit ts of the last `Put`/`Delete`.
        last_change_ts: u64,
        /// Estimated number of versions to skip to reach it.
        estimated_versions_to_last_change: u64,
    },
    /// The key has no data version.
    NotExist,
}

impl LastChange {
    /// The `(last_change_ts, versions_to_last_change)` pair of `kvrpcpb.MvccWrite`.
    ///
    /// Mirrors TiKV `LastChange::to_parts`.
    pub fn to_parts(self) -> (u64, u64) {
        match self {
            LastChange::Unknown => (0, 0),
            LastChange::Exist {
                last_change_ts,
                estimated_versions_to_last_change,
            } => (last_change_ts, estimated_versions_to_last_change),
            LastChange::NotExist => (0, 1),
        }
    }
}

/// Kind of a lock in the lock column family.
///
/// Mirrors TiKV `components/txn_types/src/lock.rs` `LockType`. TiKV's `Shared` tag only marks
/// the encoding of a [`SharedLocks`] record; here that is the [`LockEntry::Shared`] variant,
/// and the holders inside it are `Pessimistic` (locked) or `Lock` (prewritten).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockType {
    /// Prewritten put.
    Put,
    /// Prewritten delete.
    Delete,
    /// Prewritten lock-only mutation.
    Lock,
    /// Pessimistic lock (not prewritten yet).
    Pessimistic,
}

impl LockType {
    /// The `kvrpcpb.Op` reported in `LockInfo.lock_type`.
    ///
    /// Mirrors TiKV `Lock::into_lock_info`.
    pub fn to_op(self) -> Op {
        match self {
            LockType::Put => Op::Put,
            LockType::Delete => Op::Del,
            LockType::Lock => Op::Lock,
            LockType::Pessimistic => Op::PessimisticLock,
        }
    }
}

/// A percolator lock.
///
/// Mirrors TiKV `components/txn_types/src/lock.rs` `Lock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    /// Kind of lock.
    pub lock_type: LockType,
    /// Primary key of the transaction.
    pub primary: Vec<u8>,
    /// Start ts of the transaction.
    pub ts: u64,
    /// Time to live in milliseconds, counted from the physical part of `ts`.
    pub ttl: u64,
    /// Value embedded in the lock (values up to [`SHORT_VALUE_MAX_LEN`]).
    pub short_value: Option<Vec<u8>>,
    /// For-update ts; non-zero for pessimistic transactions.
    pub for_update_ts: u64,
    /// Number of keys the transaction writes in this region (a hint).
    pub txn_size: u64,
    /// Minimum commit ts (pushed by readers, computed for async commit / 1PC).
    pub min_commit_ts: u64,
    /// Whether the transaction uses async commit.
    pub use_async_commit: bool,
    /// Whether the lock is an in-flight 1PC lock (never persisted by this engine).
    pub use_one_pc: bool,
    /// Secondary keys (only on the primary lock of an async-commit transaction).
    pub secondaries: Vec<Vec<u8>>,
    /// Start ts of other transactions that were rolled back on this key while
    /// the lock existed (async commit overlapped-rollback protection).
    pub rollback_ts: Vec<u64>,
    /// Last data change of the key (only recorded on `Lock`-type locks).
    pub last_change: LastChange,
    /// Source of the transaction (`Context.txn_source`).
    pub txn_source: u64,
    /// Pessimistic lock acquired in force-lock mode despite a write conflict.
    pub is_locked_with_conflict: bool,
    /// Pipelined-DML flush generation (0 for normal prewrites).
    pub generation: u64,
}

impl Lock {
    /// Builds a lock with the common fields; the rest take their defaults.
    ///
    /// Mirrors TiKV `Lock::new`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        lock_type: LockType,
        primary: Vec<u8>,
        ts: u64,
        ttl: u64,
        short_value: Option<Vec<u8>>,
        for_update_ts: u64,
        txn_size: u64,
        min_commit_ts: u64,
        is_locked_with_conflict: bool,
    ) -> Lock {
        Lock {
            lock_type,
            primary,
            ts,
            ttl,
            short_value,
            for_update_ts,
            txn_size,
            min_commit_ts,
            use_async_commit: false,
            use_one_pc: false,
            secondaries: Vec::new(),
            rollback_ts: Vec::new(),
            last_change: LastChange::Unknown,
            txn_source: 0,
            is_locked_with_conflict,
            generation: 0,
        }
    }

    /// Whether the lock belongs to a pessimistic transaction.
    pub fn is_pessimistic_txn(&self) -> bool {
        self.for_update_ts != 0
    }

    /// Whether the lock is a pessimistic lock (not prewritten yet).
    pub fn is_pessimistic_lock(&self) -> bool {
        self.lock_type == LockType::Pessimistic
    }

    /// Whether the lock is a pessimistic lock taken with a write conflict.
    pub fn is_pessimistic_lock_with_conflict(&self) -> bool {
        self.is_pessimistic_lock() && self.is_locked_with_conflict
    }

    /// The lock as reported to clients.
    ///
    /// Mirrors TiKV `Lock::into_lock_info`.
    pub fn to_lock_info(&self, raw_key: &[u8]) -> LockInfo {
        LockInfo {
            primary_lock: self.primary.clone(),
            lock_version: self.ts,
            key: raw_key.to_vec(),
            lock_ttl: self.ttl,
            txn_size: self.txn_size,
            lock_type: self.lock_type.to_op(),
            lock_for_update_ts: self.for_update_ts,
            use_async_commit: self.use_async_commit,
            min_commit_ts: self.min_commit_ts,
            secondaries: self.secondaries.clone(),
            duration_to_last_update_ms: 0,
            shared_lock_infos: Vec::new(),
        }
    }
}

/// A lock as reported to clients; the fields of `kvrpcpb.LockInfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    /// Primary key of the lock owner.
    pub primary_lock: Vec<u8>,
    /// Start ts of the lock owner.
    pub lock_version: u64,
    /// The locked key.
    pub key: Vec<u8>,
    /// TTL in milliseconds.
    pub lock_ttl: u64,
    /// Transaction size hint.
    pub txn_size: u64,
    /// Lock type as an `Op`.
    pub lock_type: Op,
    /// For-update ts of the lock.
    pub lock_for_update_ts: u64,
    /// Whether the owner uses async commit.
    pub use_async_commit: bool,
    /// Minimum commit ts.
    pub min_commit_ts: u64,
    /// Secondaries of an async-commit primary lock.
    pub secondaries: Vec<Vec<u8>>,
    /// Milliseconds since the lock-wait information was last updated (lock-wait timeouts only).
    pub duration_to_last_update_ms: u64,
    /// The holders of a shared lock (only when `lock_type` is [`Op::SharedLock`]; the wrapper's
    /// other fields are then empty).
    pub shared_lock_infos: Vec<LockInfo>,
}

impl LockInfo {
    /// Whether this is the wrapper of a shared lock. Mirrors TiKV `LockInfoExt::is_shared_lock`.
    pub fn is_shared_lock(&self) -> bool {
        self.lock_type == Op::SharedLock
    }

    /// The start ts of every transaction holding the lock: the holders of a shared lock, or
    /// the one owner. Mirrors TiKV `LockInfoExt::iter_locks`.
    pub fn holder_ts(&self) -> Vec<u64> {
        if self.is_shared_lock() {
            self.shared_lock_infos
                .iter()
                .map(|l| l.lock_version)
                .collect()
        } else {
            vec![self.lock_version]
        }
    }
}

/// The shared locks of one key: the pessimistic (or prewritten) locks of several
/// transactions, by start ts.
///
/// Mirrors TiKV `components/txn_types/src/lock.rs` `SharedLocks`. TiKV keeps the holders in a
/// hash map; here they are ordered by start ts, which is one of the orders TiKV may produce.
/// Once an exclusive lock request has met the holders the record is *shrink-only*: no new
/// holder may join (so the exclusive waiter cannot starve), holders only leave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedLocks {
    shrink_only: bool,
    locks: std::collections::BTreeMap<u64, Lock>,
}

impl SharedLocks {
    /// An empty record.
    pub fn new() -> SharedLocks {
        SharedLocks::default()
    }

    /// Number of holders.
    pub fn len(&self) -> usize {
        self.locks.len()
    }

    /// Whether no transaction holds the lock.
    pub fn is_empty(&self) -> bool {
        self.locks.is_empty()
    }

    /// Whether new holders are refused. Mirrors TiKV `SharedLocks::is_shrink_only`.
    pub fn is_shrink_only(&self) -> bool {
        self.shrink_only
    }

    /// Refuses new holders from now on (one way). Mirrors TiKV `SharedLocks::set_shrink_only`.
    pub fn set_shrink_only(&mut self) {
        self.shrink_only = true;
    }

    /// Whether the transaction `start_ts` holds the lock.
    pub fn contains_start_ts(&self, start_ts: u64) -> bool {
        self.locks.contains_key(&start_ts)
    }

    /// The holder `start_ts`'s lock. Mirrors TiKV `SharedLocks::get_lock`.
    pub fn get_lock(&self, start_ts: u64) -> Option<&Lock> {
        self.locks.get(&start_ts)
    }

    /// The holders' locks, by start ts.
    pub fn locks(&self) -> impl Iterator<Item = &Lock> {
        self.locks.values()
    }

    /// Removes the holder `start_ts`. Mirrors TiKV `SharedLocks::remove_lock`.
    pub fn remove_lock(&mut self, start_ts: u64) -> Option<Lock> {
        self.locks.remove(&start_ts)
    }

    /// Adds a holder; refused when shrink-only or already held. Mirrors TiKV
    /// `SharedLocks::insert_lock` (`InvalidOperation`).
    pub fn insert_lock(&mut self, lock: Lock) -> Result<(), super::error::MvccError> {
        if self.shrink_only {
            return Err(super::error::MvccError::Other(format!(
                "cannot insert new lock #{} into shrink-only SharedLocks",
                lock.ts
            )));
        }
        if self.locks.contains_key(&lock.ts) {
            return Err(super::error::MvccError::Other(format!(
                "lock #{} already exists in SharedLocks",
                lock.ts
            )));
        }
        self.locks.insert(lock.ts, lock);
        Ok(())
    }

    /// Replaces an existing holder's lock. Mirrors TiKV `SharedLocks::update_lock`.
    pub fn update_lock(&mut self, lock: Lock) -> Result<(), super::error::MvccError> {
        if !self.locks.contains_key(&lock.ts) {
            return Err(super::error::MvccError::Other(format!(
                "lock #{} does not exist in SharedLocks",
                lock.ts
            )));
        }
        self.locks.insert(lock.ts, lock);
        Ok(())
    }

    /// The wrapper lock info: `lock_type = SharedLock`, the key, and one lock info per
    /// holder; everything else empty. Mirrors TiKV `SharedLocks::into_lock_info`.
    pub fn to_lock_info(&self, raw_key: &[u8]) -> LockInfo {
        LockInfo {
            primary_lock: Vec::new(),
            lock_version: 0,
            key: raw_key.to_vec(),
            lock_ttl: 0,
            txn_size: 0,
            lock_type: Op::SharedLock,
            lock_for_update_ts: 0,
            use_async_commit: false,
            min_commit_ts: 0,
            secondaries: Vec::new(),
            duration_to_last_update_ms: 0,
            shared_lock_infos: self
                .locks
                .values()
                .map(|l| l.to_lock_info(raw_key))
                .collect(),
        }
    }
}

/// What the lock column family holds for a key: one transaction's lock, or shared locks.
///
/// Mirrors TiKV `components/txn_types/src/lock.rs` `LockOrSharedLocks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockEntry {
    /// An exclusive lock (prewritten, or pessimistic).
    Lock(Lock),
    /// Shared pessimistic locks of one or more transactions.
    Shared(SharedLocks),
}

impl LockEntry {
    /// The lock as reported to clients (the wrapper for shared locks).
    pub fn to_lock_info(&self, raw_key: &[u8]) -> LockInfo {
        match self {
            LockEntry::Lock(l) => l.to_lock_info(raw_key),
            LockEntry::Shared(s) => s.to_lock_info(raw_key),
        }
    }

    /// The exclusive lock, if that is what the entry holds.
    pub fn as_lock(&self) -> Option<&Lock> {
        match self {
            LockEntry::Lock(l) => Some(l),
            LockEntry::Shared(_) => None,
        }
    }

    /// The shared locks, if that is what the entry holds.
    pub fn as_shared(&self) -> Option<&SharedLocks> {
        match self {
            LockEntry::Lock(_) => None,
            LockEntry::Shared(s) => Some(s),
        }
    }

    /// The locks of the entry's transactions: the exclusive lock, or every holder.
    pub fn holders(&self) -> Vec<&Lock> {
        match self {
            LockEntry::Lock(l) => vec![l],
            LockEntry::Shared(s) => s.locks().collect(),
        }
    }
}

/// Kind of a write record.
///
/// Mirrors TiKV `components/txn_types/src/write.rs` `WriteType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteType {
    /// A committed put.
    Put,
    /// A committed delete.
    Delete,
    /// A committed lock-only mutation.
    Lock,
    /// A rollback record.
    Rollback,
}

impl WriteType {
    /// The write type a committed lock turns into (`None` for pessimistic locks).
    ///
    /// Mirrors TiKV `WriteType::from_lock_type`.
    pub fn from_lock_type(lock_type: LockType) -> Option<WriteType> {
        match lock_type {
            LockType::Put => Some(WriteType::Put),
            LockType::Delete => Some(WriteType::Delete),
            LockType::Lock => Some(WriteType::Lock),
            LockType::Pessimistic => None,
        }
    }

    /// The `kvrpcpb.Op` reported by `MvccGetByKey`.
    pub fn to_op(self) -> Op {
        match self {
            WriteType::Put => Op::Put,
            WriteType::Delete => Op::Del,
            WriteType::Lock => Op::Lock,
            WriteType::Rollback => Op::Rollback,
        }
    }
}

/// A record in the write column family, keyed by `(key, commit_ts)`.
///
/// Mirrors TiKV `components/txn_types/src/write.rs` `Write`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// Kind of record.
    pub write_type: WriteType,
    /// Start ts of the transaction that wrote it.
    pub start_ts: u64,
    /// Embedded value (puts) or the protected-rollback marker.
    pub short_value: Option<Vec<u8>>,
    /// A rollback of the transaction whose start ts equals this record's
    /// commit ts was folded into this record.
    pub has_overlapped_rollback: bool,
    /// Commit ts of the next data version when the overlapped-rollback flag was
    /// set; a record whose fence is at or below the read ts is not the latest.
    pub gc_fence: Option<u64>,
    /// Last data change (only on `Lock` / `Rollback` records).
    pub last_change: LastChange,
    /// Source of the transaction.
    pub txn_source: u64,
}

impl Write {
    /// A record of the given type.
    ///
    /// Mirrors TiKV `Write::new`.
    pub fn new(write_type: WriteType, start_ts: u64, short_value: Option<Vec<u8>>) -> Write {
        Write {
            write_type,
            start_ts,
            short_value,
            has_overlapped_rollback: false,
            gc_fence: None,
            last_change: LastChange::Unknown,
            txn_source: 0,
        }
    }

    /// A rollback record, protected (never collapsed) or not.
    ///
    /// Mirrors TiKV `Write::new_rollback`.
    pub fn new_rollback(start_ts: u64, protected: bool) -> Write {
        let short_value = protected.then(|| PROTECTED_ROLLBACK_SHORT_VALUE.to_vec());
        Write::new(WriteType::Rollback, start_ts, short_value)
    }

    /// Marks an overlapped rollback on this record.
    ///
    /// Mirrors TiKV `Write::set_overlapped_rollback`.
    pub fn set_overlapped_rollback(mut self, has: bool, gc_fence: Option<u64>) -> Write {
        self.has_overlapped_rollback = has;
        self.gc_fence = gc_fence;
        self
    }

    /// Whether this is a protected rollback record.
    ///
    /// Mirrors TiKV `WriteRef::is_protected`.
    pub fn is_protected(&self) -> bool {
        self.write_type == WriteType::Rollback
            && self.short_value.as_deref() == Some(PROTECTED_ROLLBACK_SHORT_VALUE)
    }

    /// Whether the record may be the latest version for a read at `read_ts`.
    ///
    /// Mirrors TiKV `WriteRef::check_gc_fence_as_latest_version`.
    pub fn check_gc_fence_as_latest_version(&self, read_ts: u64) -> bool {
        !matches!(self.gc_fence, Some(fence) if fence != 0 && fence <= read_ts)
    }
}

/// A mutation of a prewrite or flush request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mutation {
    /// The operation (`Put`, `Del`, `Lock`, `SharedLock`, `Insert` or `CheckNotExists`).
    pub op: Op,
    /// The key.
    pub key: Vec<u8>,
    /// The value (for `Put` and `Insert`).
    pub value: Vec<u8>,
    /// Assertion on the key's existence.
    pub assertion: Assertion,
}

impl Mutation {
    /// A put.
    pub fn put(key: &[u8], value: &[u8]) -> Mutation {
        Mutation::with_op(Op::Put, key, value)
    }

    /// A delete.
    pub fn delete(key: &[u8]) -> Mutation {
        Mutation::with_op(Op::Del, key, b"")
    }

    /// A lock-only mutation.
    pub fn lock(key: &[u8]) -> Mutation {
        Mutation::with_op(Op::Lock, key, b"")
    }

    /// An insert (the key must not exist).
    pub fn insert(key: &[u8], value: &[u8]) -> Mutation {
        Mutation::with_op(Op::Insert, key, value)
    }

    /// The prewrite of a shared pessimistic lock. Mirrors TiKV `Mutation::make_shared_lock`.
    pub fn shared_lock(key: &[u8]) -> Mutation {
        Mutation::with_op(Op::SharedLock, key, b"")
    }

    /// A check that the key does not exist.
    pub fn check_not_exists(key: &[u8]) -> Mutation {
        Mutation::with_op(Op::CheckNotExists, key, b"")
    }

    /// A mutation with an explicit op and no assertion.
    pub fn with_op(op: Op, key: &[u8], value: &[u8]) -> Mutation {
        Mutation {
            op,
            key: key.to_vec(),
            value: value.to_vec(),
            assertion: Assertion::None,
        }
    }

    /// The same mutation with an assertion.
    pub fn with_assertion(mut self, assertion: Assertion) -> Mutation {
        self.assertion = assertion;
        self
    }

    /// Whether the mutation requires the key to be absent.
    ///
    /// Mirrors TiKV `Mutation::should_not_exists`.
    pub fn should_not_exist(&self) -> bool {
        matches!(self.op, Op::Insert | Op::CheckNotExists)
    }

    /// Whether the mutation writes nothing.
    ///
    /// Mirrors TiKV `Mutation::should_not_write`.
    pub fn should_not_write(&self) -> bool {
        self.op == Op::CheckNotExists
    }
}

/// One edge of a deadlock's wait chain; the fields of `deadlock.WaitForEntry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitForEntry {
    /// The waiting transaction.
    pub txn: u64,
    /// The transaction being waited for.
    pub wait_for_txn: u64,
    /// Hash of the key being waited on.
    pub key_hash: u64,
    /// The key being waited on.
    pub key: Vec<u8>,
    /// Resource group tag of the waiting request.
    pub resource_group_tag: Vec<u8>,
}

/// Hash of a key used for lock-wait bookkeeping and deadlock reports.
///
/// Follows TiKV `components/txn_types/src/types.rs` `Key::gen_hash`: farmhash
/// `fingerprint64` of the raw user key (this engine stores raw keys, so no
/// decoding is needed). The value reaches clients as
/// `Deadlock.deadlock_key_hash` and `WaitForEntry.key_hash`; client-go
/// `txnkv/transaction/txn.go` `hashInKeys` matches it against its own keys to
/// decide whether a deadlock is retryable.
pub fn key_hash(key: &[u8]) -> u64 {
    super::farmhash::fingerprint64(key)
}

/// A lock released by a write command; used to wake up waiters.
///
/// Mirrors TiKV `src/storage/mvcc/txn.rs` `ReleasedLock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleasedLock {
    /// Start ts of the lock owner.
    pub start_ts: u64,
    /// Commit ts (0 when rolled back).
    pub commit_ts: u64,
    /// The released key.
    pub key: Vec<u8>,
    /// Whether the lock belonged to a pessimistic transaction.
    pub pessimistic: bool,
}
