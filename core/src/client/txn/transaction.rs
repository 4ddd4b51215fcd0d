//! [`Transaction`]: reads through the transaction's buffer, buffered writes, pessimistic
//! locks, commit and rollback.
//!
//! # Concurrency
//!
//! Reads, writes and locks take `&self`, so several of them can run at once on one
//! transaction (for example with `join!`); the transaction's state (its memory buffer, primary
//! key, `for_update_ts`, status) sits behind a short `std::sync::Mutex` that is never held
//! across an `.await`. `commit` and `rollback` take `&mut self`, so the borrow checker
//! guarantees that no read, write or scan of the transaction is still in flight when it ends.
//!
//! # Lifecycle
//!
//! After `commit` or `rollback` (whatever their outcome) the transaction is closed and every
//! call fails with [`Error::TransactionClosed`] (client-go `ErrInvalidTxn`). Dropping a
//! transaction that is still open never panics: if it holds pessimistic locks they are rolled
//! back in the background (a task spawned on the client's runtime) and a `tracing` warning
//! says so; buffered writes of an optimistic transaction are simply discarded (nothing was sent
//! to TiKV yet).
//!
//! # Pessimistic writes
//!
//! In a pessimistic transaction `put`, `insert` and `delete` lock their key first (unless this
//! transaction already holds its lock), as TiDB's DML does on top of client-go: conflicts show
//! up when writing rather than at commit. Locks are taken at the transaction's
//! `for_update_ts`, which starts at the start timestamp and is refreshed from the TSO only
//! when a lock meets a write committed after it (client-go `LockCtx.ForUpdateTS`, refreshed by
//! TiDB on a write conflict).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use tracing::Instrument;

use super::backend::CommitRequest;
use super::backend::{self, LockRequest, TtlHandle};
use super::buffer::{BufferHandle, TxnSnapshot};
use super::client::TransactionClient;
use super::options::{
    CommitInfo, CommitMode, CommitTimings, LockOptions, LockedValue, TransactionOptions,
};
use super::range::KeyRange;
use super::reader::Reader;
use super::scan::{Scan, ScanKeys};
use crate::client::runtime::Runtime;
use crate::client::sync::lock;
use crate::error::Error;
use crate::machine::raw::Value;
use crate::machine::txn::aggressive::AggressiveLock;
use crate::machine::txn::membuffer::MAX_KEY_LEN;
use crate::machine::txn::mutations::LockTtls;
use crate::machine::txn::{AggressiveLocking, BufferedValue, FlagsOp, MemBuffer, ScanOrder};
use crate::machine::{Key, Timestamp};

/// How many times a pessimistic lock is retried with a fresh `for_update_ts` after meeting a
/// newer committed write. Mirrors TiDB's `pessimistic-txn.max-retry-count` (256), the retry
/// loop client-go callers run around `LockKeys`.
pub const PESSIMISTIC_LOCK_MAX_RETRIES: u32 = 256;

/// One write of [`Transaction::batch_mutate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    /// Write `value` at the key, as [`Transaction::put`] does.
    Put(Key, Value),
    /// Delete the key, as [`Transaction::delete`] does.
    Delete(Key),
}

impl Mutation {
    /// The key the mutation writes.
    pub fn key(&self) -> &Key {
        match self {
            Mutation::Put(key, _) | Mutation::Delete(key) => key,
        }
    }
}

/// Where a transaction is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Active,
    Committing,
    Committed,
    RolledBack,
    CommitFailed,
}

/// The mutable state of a transaction (behind the transaction's mutex).
#[derive(Debug)]
pub(crate) struct TxnState {
    pub buffer: MemBuffer,
    pub status: Status,
    /// The primary key chosen by the first pessimistic lock.
    pub primary: Option<Key>,
    /// The timestamp pessimistic locks are taken at.
    pub for_update_ts: Timestamp,
    /// Keys holding a pessimistic lock of this transaction.
    pub locked: usize,
    /// The heartbeat of the primary lock, once started.
    pub ttl: Option<TtlHandle>,
    /// The commit timestamp, once committed.
    pub commit_ts: Option<Timestamp>,
    /// The `for_update_ts` TiKV holds on the lock of each key locked in force-lock mode,
    /// checked again by prewrite (`for_update_ts_constraints`). Mirrors client-go
    /// `KVTxn.forUpdateTSChecks`.
    pub for_update_ts_checks: std::collections::HashMap<Key, u64>,
    /// Aggressive (fair) locking mode, while on. Mirrors client-go
    /// `KVTxn.aggressiveLockingContext`.
    pub aggressive: Option<AggressiveLocking>,
    /// The largest `locked_with_conflict_ts` of a lock kept by the transaction; pessimistic
    /// rollbacks use it when larger than `for_update_ts`. Mirrors client-go
    /// `twoPhaseCommitter.maxLockedWithConflictTS`.
    pub max_locked_with_conflict_ts: u64,
}

impl TxnState {
    pub fn check_active(&self) -> Result<(), Error> {
        match self.status {
            Status::Active => Ok(()),
            Status::Committing => Err(Error::TransactionClosed("a commit is in progress")),
            Status::Committed => Err(Error::TransactionClosed("committed")),
            Status::RolledBack => Err(Error::TransactionClosed("rolled back")),
            Status::CommitFailed => Err(Error::TransactionClosed("its commit failed")),
        }
    }
}

/// A transaction: reads see a snapshot at its start timestamp plus its own writes; writes are
/// buffered until [`Transaction::commit`]. See the module docs for concurrency, lifecycle and
/// pessimistic behaviour.
///
/// ```no_run
/// # use tikv_core::client::{Runtime, TransactionClient};
/// # async fn example<R: Runtime>(client: TransactionClient<R>) -> Result<(), tikv_core::Error> {
/// let mut txn = client.begin_optimistic().await?;
/// let balance = txn.get("alice").await?;
/// txn.put("alice", "90").await?;
/// txn.put("bob", "110").await?;
/// let commit_ts = txn.commit().await?;
/// # let _ = (balance, commit_ts);
/// # Ok(())
/// # }
/// ```
pub struct Transaction<R: Runtime> {
    client: TransactionClient<R>,
    reader: Reader<R>,
    options: TransactionOptions,
    state: Mutex<TxnState>,
    began: Instant,
}

impl<R: Runtime> std::fmt::Debug for Transaction<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = lock(&self.state);
        f.debug_struct("Transaction")
            .field("start_ts", &self.reader.start_ts().version())
            .field("kind", &self.options.kind)
            .field("status", &s.status)
            .field("buffered", &s.buffer.len())
            .field("locked", &s.locked)
            .finish()
    }
}

impl<R: Runtime> Transaction<R> {
    pub(crate) fn new(
        client: TransactionClient<R>,
        start_ts: Timestamp,
        options: TransactionOptions,
    ) -> Self {
        let reader = Reader::new(client.cluster().clone(), start_ts, options.ctx.clone());
        let began = client.cluster().runtime().now();
        let mut buffer = MemBuffer::new();
        if let Some(hook) = &options.memory_footprint_hook {
            buffer.set_memory_footprint_change_hook(hook.clone());
        }
        Transaction {
            state: Mutex::new(TxnState {
                buffer,
                status: Status::Active,
                primary: None,
                for_update_ts: start_ts,
                locked: 0,
                ttl: None,
                commit_ts: None,
                for_update_ts_checks: Default::default(),
                aggressive: None,
                max_locked_with_conflict_ts: 0,
            }),
            client,
            reader,
            options,
            began,
        }
    }

    /// The start timestamp: reads see the data committed before it.
    pub fn start_ts(&self) -> Timestamp {
        self.reader.start_ts()
    }

    /// The commit timestamp once the transaction committed (`None` before, after a failure,
    /// or when it wrote nothing). Mirrors client-go `KVTxn.CommitTS`.
    pub fn commit_ts(&self) -> Option<Timestamp> {
        lock(&self.state).commit_ts
    }

    /// The id of the cluster the transaction runs on, as PD reported it. Mirrors client-go
    /// `KVTxn.GetClusterID` (`KVStore.GetClusterID`).
    pub fn cluster_id(&self) -> u64 {
        self.client.cluster().cluster_id()
    }

    /// The options the transaction was begun with.
    pub fn options(&self) -> &TransactionOptions {
        &self.options
    }

    /// Whether the transaction is pessimistic.
    pub fn is_pessimistic(&self) -> bool {
        self.options.is_pessimistic()
    }

    /// Whether the heartbeat of the primary lock stopped at `Config::max_txn_ttl`, so the
    /// transaction's pessimistic locks may have expired: it should only commit or roll back.
    /// Mirrors client-go `LockCtx.LockExpired` as set by `keepAlive`.
    pub fn lock_expired(&self) -> bool {
        lock(&self.state)
            .ttl
            .as_ref()
            .is_some_and(|t| t.lock_expired.is_set())
    }

    /// Number of keys in the buffer (written or locked). Mirrors client-go `KVTxn.Len`.
    pub fn len(&self) -> usize {
        lock(&self.state).buffer.len()
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of keys and values buffered. Mirrors client-go `KVTxn.Size`.
    pub fn size(&self) -> u64 {
        lock(&self.state).buffer.size()
    }

    /// Whether the transaction has neither written nor locked anything. Mirrors client-go
    /// `KVTxn.IsReadOnly`.
    pub fn is_read_only(&self) -> bool {
        !lock(&self.state).buffer.dirty()
    }

    /// Whether the transaction is still open (not committed, rolled back or failed). Mirrors
    /// client-go `KVTxn.Valid`.
    pub fn is_open(&self) -> bool {
        lock(&self.state).status == Status::Active
    }

    /// Applies flag operations to `key` in the transaction's buffer (the key need not hold a
    /// value): per-key assertions checked by TiKV at prewrite under a non-`Off`
    /// [`TransactionOptions::assertion_level`](super::TransactionOptions::assertion_level)
    /// (`SetAssertExist`, `SetAssertNotExist`, ...), presume-not-exists, constraint checks
    /// postponed to prewrite, and so on. Flags that claim locks the transaction does not hold
    /// make the commit fail. Mirrors client-go `MemBuffer.UpdateFlags`.
    pub fn update_key_flags(&self, key: impl Into<Key>, ops: &[FlagsOp]) -> Result<(), Error> {
        let key = key.into();
        check_key(&key)?;
        let mut s = lock(&self.state);
        s.check_active()?;
        s.buffer.update_flags(key, ops).map_err(Error::from)
    }

    /// The flags of `key` in the transaction's buffer (`None` when it is not buffered).
    /// Mirrors client-go `MemBuffer.GetFlags`.
    pub fn key_flags(&self, key: impl AsRef<[u8]>) -> Option<crate::machine::txn::KeyFlags> {
        lock(&self.state).buffer.get_flags(key.as_ref())
    }

    /// The buffered value of `key` (`Some(None)`: deleted in this transaction), or `None`
    /// when the snapshot decides.
    fn buffered(&self, key: &[u8]) -> Result<Option<Option<Value>>, Error> {
        let s = lock(&self.state);
        s.check_active()?;
        Ok(s.buffer.get(key).map(|b| match b {
            BufferedValue::Put(v) => Some(v),
            BufferedValue::Deleted => None,
        }))
    }

    /// The value of `key`: this transaction's own write if it made one, else the value
    /// committed before the start timestamp. Mirrors client-go `KVTxn.Get`.
    pub async fn get(&self, key: impl Into<Key>) -> Result<Option<Value>, Error> {
        let key = key.into();
        let span = tracing::debug_span!(
            "tikv.txn.get",
            start_ts = self.start_ts().version(),
            session_id = self.options.session_id,
            key = %self.reader.cluster.key_field(&key)
        );
        async {
            if let Some(v) = self.buffered(&key)? {
                return Ok(v);
            }
            self.reader.get(key).await
        }
        .instrument(span)
        .await
    }

    /// The values of `keys`, aligned with them (`None` where absent), buffered writes first.
    /// Mirrors client-go `KVTxn.BatchGet` (`BufferBatchGetter`).
    pub async fn batch_get(
        &self,
        keys: impl IntoIterator<Item = impl Into<Key>>,
    ) -> Result<Vec<Option<Value>>, Error> {
        let keys: Vec<Key> = keys.into_iter().map(Into::into).collect();
        let span = tracing::debug_span!(
            "tikv.txn.batch_get",
            start_ts = self.start_ts().version(),
            session_id = self.options.session_id,
            keys = keys.len()
        );
        async {
            let mut out: Vec<Option<Option<Value>>> = Vec::with_capacity(keys.len());
            let mut missing: Vec<Key> = Vec::new();
            {
                let s = lock(&self.state);
                s.check_active()?;
                for k in &keys {
                    let b = s.buffer.get(k).map(|b| b.value().cloned());
                    if b.is_none() {
                        missing.push(k.clone());
                    }
                    out.push(b);
                }
            }
            missing.sort_unstable();
            missing.dedup();
            let found = self.reader.batch_get(missing).await?;
            let found: std::collections::HashMap<Key, Value> = found.into_iter().collect();
            Ok(keys
                .iter()
                .zip(out)
                .map(|(k, b)| match b {
                    Some(v) => v,
                    None => found.get(k).cloned(),
                })
                .collect())
        }
        .instrument(span)
        .await
    }

    /// A stream of the pairs of `range` in key order: the snapshot's pairs merged with this
    /// transaction's writes, fetched 256 pairs per RPC (see [`Scan::batch_size`]). Mirrors
    /// client-go `KVTxn.Iter`.
    pub fn scan(&self, range: impl Into<KeyRange>) -> Scan<'_, R> {
        Scan::new(
            &self.reader,
            Some(&self.state),
            range.into(),
            ScanOrder::Forward,
            false,
            self.options.session_id,
        )
    }

    /// Like [`Transaction::scan`] in descending key order. Mirrors client-go
    /// `KVTxn.IterReverse`. With API V1 the range needs an end key (see [`Scan`]).
    pub fn scan_reverse(&self, range: impl Into<KeyRange>) -> Scan<'_, R> {
        Scan::new(
            &self.reader,
            Some(&self.state),
            range.into(),
            ScanOrder::Reverse,
            false,
            self.options.session_id,
        )
    }

    /// Like [`Transaction::scan`], keys only (TiKV sends no values).
    pub fn scan_keys(&self, range: impl Into<KeyRange>) -> ScanKeys<'_, R> {
        ScanKeys::new(Scan::new(
            &self.reader,
            Some(&self.state),
            range.into(),
            ScanOrder::Forward,
            true,
            self.options.session_id,
        ))
    }

    /// Like [`Transaction::scan_reverse`], keys only.
    pub fn scan_keys_reverse(&self, range: impl Into<KeyRange>) -> ScanKeys<'_, R> {
        ScanKeys::new(Scan::new(
            &self.reader,
            Some(&self.state),
            range.into(),
            ScanOrder::Reverse,
            true,
            self.options.session_id,
        ))
    }

    /// Buffers a write of `value` at `key`; an empty value is refused with
    /// [`Error::EmptyValue`] (it is TiKV's tombstone). In a pessimistic transaction the key
    /// is locked first. Mirrors client-go `KVTxn.Set`.
    pub async fn put(&self, key: impl Into<Key>, value: impl Into<Value>) -> Result<(), Error> {
        let (key, value) = (key.into(), value.into());
        let span = tracing::debug_span!(
            "tikv.txn.put",
            start_ts = self.start_ts().version(),
            session_id = self.options.session_id,
            key = %self.reader.cluster.key_field(&key),
            value_len = value.len()
        );
        async {
            if value.is_empty() {
                return Err(Error::EmptyValue);
            }
            self.check_entry(&key, &value)?;
            self.lock_for_write(&key, false).await?;
            let mut s = lock(&self.state);
            s.check_active()?;
            s.buffer.set(key, value).map_err(Error::from)
        }
        .instrument(span)
        .await
    }

    /// Buffers a write of `value` at `key` that must not overwrite an existing key: the
    /// commit (optimistic) or the lock (pessimistic) fails with [`Error::KeyExists`] if the
    /// key exists. Mirrors client-go `MemBuffer.SetWithFlags(k, v, SetPresumeKeyNotExists)`
    /// (an `Op::Insert` mutation).
    pub async fn insert(&self, key: impl Into<Key>, value: impl Into<Value>) -> Result<(), Error> {
        let (key, value) = (key.into(), value.into());
        let span = tracing::debug_span!(
            "tikv.txn.insert",
            start_ts = self.start_ts().version(),
            session_id = self.options.session_id,
            key = %self.reader.cluster.key_field(&key),
            value_len = value.len()
        );
        async {
            if value.is_empty() {
                return Err(Error::EmptyValue);
            }
            self.check_entry(&key, &value)?;
            let presume = {
                let s = lock(&self.state);
                s.check_active()?;
                match s.buffer.get(&key) {
                    Some(BufferedValue::Put(_)) => return Err(Error::KeyExists { key }),
                    // Deleted in this transaction: it exists underneath, a plain put.
                    Some(BufferedValue::Deleted) => false,
                    None => true,
                }
            };
            if presume {
                self.lock_for_write(&key, true).await?;
            }
            let mut s = lock(&self.state);
            s.check_active()?;
            let ops: &[FlagsOp] = if presume {
                &[FlagsOp::SetPresumeKeyNotExists]
            } else {
                &[]
            };
            s.buffer
                .set_with_flags(key, value, ops)
                .map_err(Error::from)
        }
        .instrument(span)
        .await
    }

    /// Buffers the deletion of `key`. In a pessimistic transaction the key is locked first.
    /// Mirrors client-go `KVTxn.Delete`.
    pub async fn delete(&self, key: impl Into<Key>) -> Result<(), Error> {
        let key = key.into();
        let span = tracing::debug_span!(
            "tikv.txn.delete",
            start_ts = self.start_ts().version(),
            session_id = self.options.session_id,
            key = %self.reader.cluster.key_field(&key)
        );
        async {
            check_key(&key)?;
            self.lock_for_write(&key, false).await?;
            let mut s = lock(&self.state);
            s.check_active()?;
            s.buffer.delete(key).map_err(Error::from)
        }
        .instrument(span)
        .await
    }

    /// Applies `mutations` in order, each exactly as [`Transaction::put`] or
    /// [`Transaction::delete`] would (same key and value checks; in a pessimistic transaction
    /// each key is locked before it is buffered). Stops at the first failing mutation and
    /// returns its error; the mutations before it stay buffered, as after the same sequence
    /// of single calls. A Rust convenience without a client-go counterpart (TiDB composes
    /// `KVTxn.Set` / `KVTxn.Delete`); client-rust offered it as `batch_mutate`.
    pub async fn batch_mutate(
        &self,
        mutations: impl IntoIterator<Item = Mutation>,
    ) -> Result<(), Error> {
        for mutation in mutations {
            match mutation {
                Mutation::Put(key, value) => self.put(key, value).await?,
                Mutation::Delete(key) => self.delete(key).await?,
            }
        }
        Ok(())
    }

    /// Takes the pessimistic lock a write needs (nothing in an optimistic transaction or when
    /// the key is already locked by this transaction).
    async fn lock_for_write(&self, key: &Key, should_not_exist: bool) -> Result<(), Error> {
        if !self.is_pessimistic() {
            return Ok(());
        }
        let opts = LockOptions::new();
        self.pessimistic_lock(vec![key.clone()], &opts, should_not_exist)
            .await
            .map(|_| ())
    }

    /// Locks `keys` for this transaction. Optimistic: the keys are checked for conflicts at
    /// commit (prewritten as `Op::Lock`). Pessimistic: the keys are locked in TiKV now,
    /// waiting for other transactions' locks as `options` says; with
    /// [`LockOptions::return_values`] or [`LockOptions::check_existence`] the result holds what
    /// the lock read for each key it locked (keys this transaction had locked before are not
    /// locked again, and are left out unless values are asked for). With
    /// [`LockOptions::share_mode`] the locks are shared (see there for the rules). Mirrors
    /// client-go `KVTxn.LockKeys` with a `kv.LockCtx` (`LockCtx.Values`).
    pub async fn lock_keys(
        &self,
        keys: impl IntoIterator<Item = impl Into<Key>>,
        options: LockOptions,
    ) -> Result<BTreeMap<Key, LockedValue>, Error> {
        let keys: Vec<Key> = keys.into_iter().map(Into::into).collect();
        let span = tracing::debug_span!(
            "tikv.txn.lock_keys",
            start_ts = self.start_ts().version(),
            session_id = self.options.session_id,
            keys = keys.len(),
            pessimistic = self.is_pessimistic()
        );
        async {
            for k in &keys {
                check_key(k)?;
            }
            if self.is_pessimistic() {
                let values = self.pessimistic_lock(keys, &options, false).await?;
                if options.return_values || options.check_existence {
                    Ok(values.into_iter().collect())
                } else {
                    Ok(BTreeMap::new())
                }
            } else {
                let mut s = lock(&self.state);
                s.check_active()?;
                for k in keys {
                    s.buffer.update_flags(k, &[FlagsOp::SetNeedLocked])?;
                }
                Ok(BTreeMap::new())
            }
        }
        .instrument(span)
        .await
    }

    /// Reads `key` and locks it: in a pessimistic transaction the value is read by the lock
    /// itself, at the lock's `for_update_ts` (the latest committed value); in an optimistic
    /// one it is read at the start timestamp and the key is checked for conflicts at commit.
    /// Mirrors client-go `LockKeys` with `LockCtx.ReturnValues` (SELECT ... FOR UPDATE).
    pub async fn get_for_update(&self, key: impl Into<Key>) -> Result<Option<Value>, Error> {
        let key = key.into();
        let mut values = self.batch_get_for_update([key]).await?;
        Ok(values.pop().flatten())
    }

    /// Like [`Transaction::get_for_update`] for several keys, aligned with them.
    pub async fn batch_get_for_update(
        &self,
        keys: impl IntoIterator<Item = impl Into<Key>>,
    ) -> Result<Vec<Option<Value>>, Error> {
        let keys: Vec<Key> = keys.into_iter().map(Into::into).collect();
        let span = tracing::debug_span!(
            "tikv.txn.batch_get_for_update",
            start_ts = self.start_ts().version(),
            session_id = self.options.session_id,
            keys = keys.len(),
            pessimistic = self.is_pessimistic()
        );
        async {
            for k in &keys {
                check_key(k)?;
            }
            if !self.is_pessimistic() {
                let values = self.batch_get(keys.iter().cloned()).await?;
                let mut s = lock(&self.state);
                s.check_active()?;
                for k in keys {
                    s.buffer.update_flags(k, &[FlagsOp::SetNeedLocked])?;
                }
                return Ok(values);
            }
            let opts = LockOptions::new().return_values(true);
            let locked = self.pessimistic_lock(keys.clone(), &opts, false).await?;
            // Buffered writes win over the locked (committed) values.
            let s = lock(&self.state);
            s.check_active()?;
            Ok(keys
                .iter()
                .map(|k| match s.buffer.get(k) {
                    Some(BufferedValue::Put(v)) => Some(v),
                    Some(BufferedValue::Deleted) => None,
                    None => locked.get(k).and_then(|l| l.value.clone()),
                })
                .collect())
        }
        .instrument(span)
        .await
    }

    /// Locks `keys` pessimistically (skipping keys this transaction already locked), retrying
    /// with a fresh `for_update_ts` after a write conflict. Returns what the lock read for
    /// each newly locked key. Mirrors client-go `KVTxn.lockKeys` (primary selection, first
    /// lock flag, TTL manager start, flag updates, and the share-mode rules of
    /// [`check_share_mode`]).
    async fn pessimistic_lock(
        &self,
        keys: Vec<Key>,
        options: &LockOptions,
        should_not_exist: bool,
    ) -> Result<std::collections::HashMap<Key, LockedValue>, Error> {
        let mut results = std::collections::HashMap::new();
        let mut retries = 0;
        loop {
            let (request, assigned_primary) = {
                let mut s = lock(&self.state);
                s.check_active()?;
                check_share_mode(&s, &keys, options)?;
                // An insert of a key this transaction locked already and saw existing is a
                // duplicate at once (no lock request would tell). Mirrors client-go
                // `lockKeys` (`checkKeyExists && valueExist` of a locked key).
                for k in &keys {
                    let flags = s.buffer.get_flags(k).unwrap_or_default();
                    if !(should_not_exist || flags.has_need_check_exists()) {
                        continue;
                    }
                    let exists = match s.aggressive.as_ref().and_then(|a| a.entry(k)) {
                        Some(l) => l.exists,
                        None => flags.has_locked() && flags.has_locked_value_exists(),
                    };
                    if exists {
                        return Err(Error::KeyExists { key: k.clone() });
                    }
                }
                // A lock call of several keys ends aggressive locking as if done. Mirrors
                // client-go `exitAggressiveLockingIfInapplicable`.
                if keys.len() > 1 && s.aggressive.is_some() {
                    let release = self.finish_aggressive_locking(&mut s)?;
                    self.release_in_background(release);
                }
                let mut todo: Vec<Key> = keys
                    .iter()
                    .filter(|k| {
                        // Keys this transaction locked already are skipped, unless the
                        // caller wants their values read again (an exclusive lock only: a
                        // shared request would meet this transaction's own lock); a lock of the
                        // previous aggressive-locking attempt is left to
                        // `AggressiveLocking::filter`.
                        let in_mode = s.aggressive.as_ref().and_then(|a| a.locked(k));
                        let locked = in_mode.is_some()
                            || s.buffer.get_flags(k).is_some_and(|f| f.has_locked());
                        !locked
                            || in_mode == Some(true)
                            || (options.return_values && !options.share_mode)
                    })
                    .cloned()
                    .collect();
                todo.sort_unstable();
                todo.dedup();
                if todo.is_empty() {
                    return Ok(results);
                }
                if options.share_mode && s.primary.is_none() {
                    // Mirrors client-go `lockKeys`: a shared-locked key cannot be the primary,
                    // so some key must have been locked exclusively first.
                    return Err(Error::invalid(
                        "pessimistic lock in share mode requires primary key to be selected",
                    ));
                }
                let assigned_primary = s.primary.is_none();
                if assigned_primary {
                    // The primary is the first key (in key order) of the first lock; in
                    // aggressive locking, the previous attempt's primary when locked again.
                    s.primary = match s.aggressive.as_mut() {
                        Some(a) => a.select_primary(&todo),
                        None => Some(todo[0].clone()),
                    };
                }
                let mut force_lock = options.wake_up_force_lock;
                let now = self.client.cluster().runtime().now();
                let for_update_ts = s.for_update_ts.version();
                let managed = self.options.managed_lock_ttl;
                let st = &mut *s;
                if let Some(a) = st.aggressive.as_mut() {
                    let filtered = a.filter(
                        &todo,
                        for_update_ts,
                        options.return_values,
                        options.check_existence,
                        now,
                        managed,
                    )?;
                    if a.must_reset_heartbeat(!filtered.to_lock.is_empty(), assigned_primary) {
                        st.ttl = None;
                    }
                    if let Some(h) = &options.stats {
                        let derived = crate::machine::txn::LockKeysStats {
                            aggressive_lock_derived: filtered.reused.len(),
                            ..Default::default()
                        };
                        h.merge(&derived);
                    }
                    for (k, l) in filtered.reused {
                        results.insert(
                            k,
                            LockedValue {
                                value: l.value,
                                exists: l.exists,
                            },
                        );
                    }
                    todo = filtered.to_lock;
                    if todo.is_empty() {
                        return Ok(results);
                    }
                    // Mirrors client-go `lockKeys`: a single key in aggressive locking uses
                    // `WakeUpModeForceLock`.
                    force_lock |= todo.len() == 1;
                }
                let is_first_lock = s.locked == 0 && todo.len() == 1 && assigned_primary;
                let request = LockRequest {
                    should_not_exist: should_not_exist && todo.len() == 1,
                    keys: todo,
                    primary: s.primary.clone().unwrap_or_default(),
                    start_ts: self.start_ts(),
                    for_update_ts: s.for_update_ts,
                    wait: options.wait.unwrap_or(self.options.lock_wait),
                    return_values: options.return_values,
                    check_existence: options.check_existence,
                    lock_only_if_exists: options.lock_only_if_exists,
                    wake_up_force_lock: force_lock,
                    in_share_mode: options.share_mode,
                    is_first_lock,
                    managed_lock_ttl: self.options.managed_lock_ttl,
                    txn_started: self.began,
                    ctx: self.options.ctx.clone(),
                    stats: options.stats.clone(),
                    hooks: self.options.lifecycle_hooks.clone(),
                };
                (request, assigned_primary)
            };
            let primary = request.primary.clone();
            let locked_keys = request.keys.clone();
            let outcome = backend::pessimistic_lock(&self.reader.cluster, request).await;
            match outcome {
                Ok(outcome) => {
                    let mut s = lock(&self.state);
                    let max_conflict = outcome
                        .locked_with_conflict
                        .values()
                        .copied()
                        .max()
                        .unwrap_or(0);
                    if let Some(a) = s.aggressive.as_mut() {
                        a.note_locked_with_conflict(max_conflict);
                    }
                    s.max_locked_with_conflict_ts = s.max_locked_with_conflict_ts.max(max_conflict);
                    for k in &locked_keys {
                        if outcome.skipped.contains(k) {
                            continue;
                        }
                        let value = outcome.values.get(k);
                        if s.aggressive.is_some() {
                            // Recorded in the aggressive-locking context, not the buffer.
                            // Mirrors client-go `lockKeys` (`currentLockedKeys`).
                            let newly = !s.buffer.get_flags(k).is_some_and(|f| f.has_locked())
                                && s.aggressive.as_ref().and_then(|a| a.locked(k)).is_none();
                            if newly {
                                s.locked += 1;
                            }
                            let conflict =
                                outcome.locked_with_conflict.get(k).copied().unwrap_or(0);
                            let lock = AggressiveLock {
                                has_return_value: options.return_values,
                                has_check_existence: options.check_existence,
                                value: value.and_then(|v| v.value.clone()),
                                exists: value.is_none_or(|v| v.exists),
                                locked_with_conflict_ts: conflict,
                                actual_for_update_ts: outcome.for_update_ts.version().max(conflict),
                            };
                            if let Some(a) = s.aggressive.as_mut() {
                                a.record(k.clone(), lock);
                            }
                            continue;
                        }
                        // Mirrors client-go `lockKeys`: `SetKeyLockedInShareMode` for a shared
                        // lock, `SetKeyLockedInExclusiveMode` otherwise.
                        let mode = if options.share_mode {
                            FlagsOp::SetKeyLockedInShareMode
                        } else {
                            FlagsOp::SetKeyLockedInExclusiveMode
                        };
                        let mut ops = vec![FlagsOp::SetKeyLocked, mode];
                        match value.map(|v| v.exists) {
                            Some(true) => ops.push(FlagsOp::SetKeyLockedValueExists),
                            Some(false) => ops.push(FlagsOp::SetKeyLockedValueNotExists),
                            None => {}
                        }
                        if !s.buffer.get_flags(k).is_some_and(|f| f.has_locked()) {
                            s.locked += 1;
                        }
                        s.buffer.update_flags(k.clone(), &ops)?;
                        // The lock's `for_update_ts` in TiKV: the newer commit it was taken
                        // over (force-lock mode), else the request's; a lock taken again keeps
                        // the larger one. Keys locked in force-lock mode get it checked at
                        // prewrite; a key relocked later follows its lock.
                        let held = outcome
                            .locked_with_conflict
                            .get(k)
                            .copied()
                            .unwrap_or(outcome.for_update_ts.version());
                        if options.wake_up_force_lock || s.for_update_ts_checks.contains_key(k) {
                            let e = s.for_update_ts_checks.entry(k.clone()).or_insert(0);
                            *e = (*e).max(held);
                        }
                    }
                    if outcome.for_update_ts > s.for_update_ts {
                        s.for_update_ts = outcome.for_update_ts;
                    }
                    if assigned_primary && outcome.skipped.contains(&primary) {
                        // Lock-only-if-exists found the primary absent: nothing holds it.
                        s.primary = None;
                    }
                    if outcome.primary_locked && s.ttl.is_none() && s.status == Status::Active {
                        s.ttl = Some(backend::start_ttl_manager(
                            &self.reader.cluster,
                            primary.clone(),
                            self.start_ts(),
                            self.options.managed_lock_ttl,
                            self.options.ctx.kill.clone(),
                        ));
                    }
                    drop(s);
                    results.extend(outcome.values);
                    return Ok(results);
                }
                Err(e) => {
                    if !matches!(e, Error::WriteConflict(_) | Error::KeyExists { .. })
                        || locked_keys.len() > 1
                    {
                        // The lock call rolled its keys back. Mirrors client-go `lockKeys`
                        // (`delete(currentLockedKeys, k)` after `asyncPessimisticRollback`).
                        if let Some(a) = lock(&self.state).aggressive.as_mut() {
                            a.forget(&locked_keys);
                        }
                    }
                    if assigned_primary {
                        let mut s = lock(&self.state);
                        if s.primary.as_ref() == Some(&primary)
                            && !s.buffer.get_flags(&primary).is_some_and(|f| f.has_locked())
                        {
                            s.primary = None;
                        }
                    }
                    if let Error::WriteConflict(_) = &e
                        && retries < PESSIMISTIC_LOCK_MAX_RETRIES
                    {
                        retries += 1;
                        let ts = self.client.current_timestamp().await?;
                        let mut s = lock(&self.state);
                        if ts > s.for_update_ts {
                            s.for_update_ts = ts;
                        }
                        tracing::debug!(
                            for_update_ts = ts.version(),
                            "lock retried after a write conflict"
                        );
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Commits the transaction and returns its commit timestamp (`None` when it wrote and
    /// locked nothing, so nothing was sent). Whatever the outcome, the transaction is closed
    /// afterwards. Mirrors client-go `KVTxn.Commit`.
    ///
    /// Optimistic transactions first take the client's local latches when enabled
    /// (failing with [`Error::WriteConflictInLatch`] without any RPC when a key was
    /// committed by this client after the start timestamp). The committer tries 1PC or async
    /// commit when enabled and eligible and falls back to 2PC when TiKV declines.
    /// [`Error::Undetermined`] means the transaction may or may not have committed.
    ///
    /// In aggressive locking mode the mode is cancelled first; if its current attempt still
    /// holds locks, the commit is refused with [`Error::InvalidArgument`] and the transaction
    /// ends (its locks are rolled back in the background), as client-go refuses it.
    pub async fn commit(&mut self) -> Result<Option<Timestamp>, Error> {
        let span = tracing::info_span!(
            "tikv.txn.commit",
            start_ts = self.start_ts().version(),
            session_id = self.options.session_id,
            pessimistic = self.is_pessimistic(),
            keys = tracing::field::Empty,
            commit_ts = tracing::field::Empty,
            mode = tracing::field::Empty,
        );
        let run = async {
            let (mutations, primary, for_update_ts, ttl, for_update_ts_checks, max_conflict) = {
                let mut s = lock(&self.state);
                s.check_active()?;
                self.end_aggressive_locking_for_commit(&mut s, true)?;
                s.status = Status::Committing;
                let pessimistic = self.is_pessimistic();
                let filter = self.options.kv_filter.clone();
                let filter = filter.as_ref().map(|f| {
                    move |key: &[u8], value: &[u8], _flags: crate::machine::txn::KeyFlags| {
                        f(key, value)
                    }
                });
                let mutations = s.buffer.build_mutations_filtered(
                    pessimistic,
                    filter
                        .as_ref()
                        .map(|f| f as &dyn crate::machine::txn::KvFilter),
                );
                // The committer now owns the values (in `mutations`); drop the buffer's copies
                // so they are freed as soon as the committer lets go of them, and keep the
                // keys and flags. Mirrors client-go `twoPhaseCommitter.commitTxn` calling
                // `ART.DiscardValues` before the primary's commit; here the buffer is no
                // longer reachable once the commit runs, so it happens once the mutations
                // are built (the transaction refuses every further read and write).
                s.buffer.discard_values();
                let checks = std::mem::take(&mut s.for_update_ts_checks);
                (
                    mutations,
                    s.primary.clone(),
                    s.for_update_ts,
                    s.ttl.take(),
                    checks,
                    s.max_locked_with_conflict_ts,
                )
            };
            tracing::Span::current().record("keys", mutations.len());
            if mutations.is_empty() {
                drop(ttl);
                lock(&self.state).status = Status::Committed;
                let info = self.commit_info(None, CommitMode::ReadOnly, false, false, 0, None);
                self.callback(&info, Ok(()));
                return Ok(None);
            }
            let keys = mutations.len();
            let use_latches = !self.is_pessimistic()
                && self.options.local_latches.unwrap_or(true)
                && self.client.latches().is_some();
            let mut latch = match (use_latches, self.client.latches()) {
                (true, Some(l)) => {
                    match l
                        .lock(
                            self.start_ts().version(),
                            mutations.iter().map(|m| m.key.clone()),
                        )
                        .await
                    {
                        Ok(g) => Some(g),
                        Err(e) => {
                            lock(&self.state).status = Status::CommitFailed;
                            let info =
                                self.commit_info(None, CommitMode::TwoPc, false, false, keys, None);
                            self.callback(&info, Err(&e));
                            return Err(e);
                        }
                    }
                }
                _ => None,
            };
            let config = self.client.cluster().config();
            let request = CommitRequest {
                start_ts: self.start_ts(),
                for_update_ts,
                mutations,
                primary,
                pessimistic: self.is_pessimistic(),
                async_commit: self
                    .options
                    .async_commit
                    .unwrap_or(config.enable_async_commit),
                one_pc: self.options.one_pc.unwrap_or(config.enable_1pc),
                causal_consistency: self.options.causal_consistency,
                commit_wait_until_tso: self.options.commit_wait_until_tso,
                commit_wait_until_tso_timeout: self.options.commit_wait_until_tso_timeout,
                commit_ts_upper_bound_check: self.options.commit_ts_upper_bound_check.clone(),
                lock_policy: self.options.prewrite_lock_policy,
                assertion_level: self.options.assertion_level,
                lock_ttls: LockTtls {
                    default: self.options.lock_ttl,
                    managed: self.options.managed_lock_ttl,
                },
                txn_started: self.began,
                ctx: self.options.ctx.clone(),
                for_update_ts_checks,
                schema_check: self.options.schema_check(),
                hooks: self.options.lifecycle_hooks.clone(),
                max_locked_with_conflict_ts: max_conflict,
            };
            let report = backend::commit(&self.reader.cluster, request).await;
            // The primary lock no longer needs keeping alive once the commit has an outcome.
            drop(ttl);
            let commit_ts = report.result.as_ref().ok().copied();
            if let Some(l) = latch.as_mut() {
                l.release(commit_ts.map(Timestamp::version));
            }
            let span = tracing::Span::current();
            if let Some(ts) = commit_ts {
                span.record("commit_ts", ts.version());
            }
            span.record("mode", tracing::field::display(report.mode));
            {
                let mut s = lock(&self.state);
                s.status = if report.result.is_ok() {
                    Status::Committed
                } else {
                    Status::CommitFailed
                };
                s.commit_ts = commit_ts;
            }
            self.client.count_commit(report.mode, &report.result);
            let info = self.commit_info(
                commit_ts,
                report.mode,
                report.async_commit_fallback,
                report.one_pc_fallback,
                keys,
                Some(report.timings),
            );
            match report.result {
                Ok(ts) => {
                    self.callback(&info, Ok(()));
                    Ok(Some(ts))
                }
                Err(e) => {
                    self.callback(&info, Err(&e));
                    Err(e)
                }
            }
        };
        run.instrument(span).await
    }

    fn commit_info(
        &self,
        commit_ts: Option<Timestamp>,
        mode: CommitMode,
        async_commit_fallback: bool,
        one_pc_fallback: bool,
        keys: usize,
        timings: Option<CommitTimings>,
    ) -> CommitInfo {
        CommitInfo {
            start_ts: self.start_ts(),
            commit_ts,
            mode,
            async_commit_fallback,
            one_pc_fallback,
            keys,
            timings: timings.unwrap_or_default(),
        }
    }

    fn callback(&self, info: &CommitInfo, result: Result<(), &Error>) {
        if let Some(cb) = &self.options.commit_callback {
            cb(info, result);
        }
    }

    /// Abandons the transaction: buffered writes are discarded and pessimistic locks are
    /// rolled back. The transaction is closed afterwards. Mirrors client-go
    /// `KVTxn.Rollback`.
    ///
    /// In aggressive locking mode its locks are rolled back too; if its current attempt still
    /// held locks the call reports [`Error::InvalidArgument`] after the rollback, as client-go
    /// refuses the rollback then (it leaves the locks to expire).
    pub async fn rollback(&mut self) -> Result<(), Error> {
        let span = tracing::debug_span!(
            "tikv.txn.rollback",
            start_ts = self.start_ts().version(),
            session_id = self.options.session_id
        );
        async {
            let (keys, for_update_ts, ttl, pending) = {
                let mut s = lock(&self.state);
                s.check_active()?;
                let pending = self.end_aggressive_locking_for_commit(&mut s, false).err();
                s.status = Status::RolledBack;
                let mut keys = locked_keys(&s.buffer);
                if let Some(a) = s.aggressive.take() {
                    keys.extend(a.held_keys());
                }
                let for_update_ts = s
                    .for_update_ts
                    .max(Timestamp(s.max_locked_with_conflict_ts));
                (keys, for_update_ts, s.ttl.take(), pending)
            };
            drop(ttl);
            if !keys.is_empty() {
                backend::pessimistic_rollback(
                    &self.reader.cluster,
                    self.start_ts(),
                    for_update_ts,
                    keys,
                )
                .await?;
            }
            match pending {
                Some(e) => Err(e),
                None => Ok(()),
            }
        }
        .instrument(span)
        .await
    }
}

/// Borrowed access to the buffer and the snapshot ([`BufferHandle`], [`TxnSnapshot`]).
impl<R: Runtime> Transaction<R> {
    /// The transaction's memory buffer: staging, checkpoints, key flags, flagged writes and
    /// snapshots of stage 0. Mirrors client-go `KVTxn.GetMemBuffer` / `GetUnionStore`.
    pub fn buffer(&self) -> BufferHandle<'_, R> {
        BufferHandle::new(self)
    }

    /// The committed data the transaction reads, without its own writes, and the options of
    /// those reads. Mirrors client-go `KVTxn.GetSnapshot`.
    pub fn snapshot(&self) -> TxnSnapshot<'_, R> {
        TxnSnapshot::new(self)
    }

    /// The memory footprint of the transaction's buffer in bytes. Mirrors client-go
    /// `KVTxn.Mem`.
    pub fn mem(&self) -> u64 {
        lock(&self.state).buffer.mem()
    }

    /// Whether a memory footprint hook is set
    /// ([`TransactionOptions::memory_footprint_hook`](super::TransactionOptions::memory_footprint_hook)).
    /// Mirrors client-go `KVTxn.MemHookSet`.
    pub fn mem_hook_set(&self) -> bool {
        lock(&self.state).buffer.mem_hook_set()
    }

    pub(crate) fn state(&self) -> &Mutex<TxnState> {
        &self.state
    }

    pub(crate) fn reader(&self) -> &Reader<R> {
        &self.reader
    }

    pub(crate) fn txn_client(&self) -> &TransactionClient<R> {
        &self.client
    }

    /// The cluster this transaction's operations run on: the client's, seen through the
    /// transaction's own RPC interceptors when it has any.
    pub(crate) fn cluster(&self) -> &crate::client::Cluster<R> {
        &self.reader.cluster
    }

    /// Fails with [`Error::TransactionClosed`] once the transaction ended.
    pub(crate) fn check_open(&self) -> Result<(), Error> {
        lock(&self.state).check_active()
    }
}

/// The keys of `buffer` holding a pessimistic lock.
pub(crate) fn locked_keys(buffer: &MemBuffer) -> Vec<Key> {
    buffer
        .range_with_flags(std::ops::Bound::Unbounded, std::ops::Bound::Unbounded)
        .filter(|(_, e)| e.flags().has_locked())
        .map(|(k, _)| k.clone())
        .collect()
}

/// The refusals client-go `KVTxn.lockKeys` makes around shared locks, checked before any
/// request: share mode cannot be combined with fair (aggressive) locking (client-go
/// `exitAggressiveLockingIfInapplicable`), and a key this transaction locked in share mode
/// cannot be locked exclusively (which also refuses writing it in a pessimistic transaction).
fn check_share_mode(s: &TxnState, keys: &[Key], options: &LockOptions) -> Result<(), Error> {
    // Mirrors client-go `lockKeys` / `exitAggressiveLockingIfInapplicable`: no shared lock
    // in fair locking nor in aggressive-locking mode.
    if options.share_mode && (options.wake_up_force_lock || s.aggressive.is_some()) {
        return Err(Error::invalid(
            "shared lock is not supported in aggressive/fair locking mode",
        ));
    }
    if !options.share_mode
        && keys.iter().any(|k| {
            s.buffer
                .get_flags(k)
                .is_some_and(|f| f.has_locked_in_share_mode())
        })
    {
        return Err(Error::invalid(
            "upgrading a shared lock to an exclusive lock is not supported",
        ));
    }
    Ok(())
}

fn check_key(key: &Bytes) -> Result<(), Error> {
    if key.is_empty() {
        Err(Error::invalid("key must not be empty"))
    } else if key.len() > MAX_KEY_LEN {
        Err(Error::KeyTooLarge { size: key.len() })
    } else {
        Ok(())
    }
}

impl<R: Runtime> Transaction<R> {
    /// Refuses a write the buffer would refuse, before a pessimistic lock is taken for it
    /// (the buffer's own check runs again when the write is buffered).
    fn check_entry(&self, key: &Bytes, value: &Value) -> Result<(), Error> {
        check_key(key)?;
        let limit = lock(&self.state).buffer.limits().entry_size;
        let size = (key.len() + value.len()) as u64;
        if size > limit {
            return Err(Error::EntryTooLarge { size, limit });
        }
        Ok(())
    }
}

impl<R: Runtime> Drop for Transaction<R> {
    fn drop(&mut self) {
        let s = match self.state.get_mut() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        match s.status {
            Status::Active => {}
            Status::Committing => {
                tracing::warn!(
                    start_ts = self.reader.start_ts().version(),
                    "transaction dropped while its commit was in progress; its locks are left \
                     to lock resolution"
                );
                return;
            }
            _ => return,
        }
        s.status = Status::RolledBack;
        drop(s.ttl.take());
        let mut keys = locked_keys(&s.buffer);
        if let Some(a) = s.aggressive.take() {
            keys.extend(a.held_keys());
        }
        let start_ts = self.reader.start_ts();
        if keys.is_empty() {
            if s.buffer.dirty() {
                tracing::warn!(
                    start_ts = start_ts.version(),
                    buffered = s.buffer.len(),
                    "transaction dropped without commit or rollback; its buffered writes are \
                     discarded"
                );
            }
            return;
        }
        tracing::warn!(
            start_ts = start_ts.version(),
            locked = keys.len(),
            "transaction dropped without commit or rollback; rolling back its pessimistic locks \
             in the background"
        );
        let cluster = self.reader.cluster.clone();
        let for_update_ts = s
            .for_update_ts
            .max(Timestamp(s.max_locked_with_conflict_ts));
        let rt = cluster.runtime().clone();
        rt.spawn(self.options.lifecycle_hooks.wrap(async move {
            if let Err(e) =
                backend::pessimistic_rollback(&cluster, start_ts, for_update_ts, keys).await
            {
                tracing::warn!(
                    start_ts = start_ts.version(),
                    error = %e,
                    "background rollback of a dropped transaction failed; the locks expire with \
                     their TTL"
                );
            }
        }));
    }
}
