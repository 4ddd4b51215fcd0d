//! Read interfaces shared by everything that answers point reads at a timestamp: a
//! [`Transaction`] (its own writes over its snapshot), a [`Snapshot`] and a transaction's
//! [`TxnSnapshot`] (committed data only). Code that only reads can be written once, generic
//! over [`Getter`] / [`BatchGetter`].
//!
//! Mirrors client-go `kv/kv.go` `Getter` and `BatchGetter`. Unlike client-go, an absent key is
//! `Ok(None)` rather than an `ErrNotExist` error. The buffer views ([`super::BufferHandle`],
//! [`super::TxnBufferSnapshot`]) are not getters: they answer "put, deleted or not buffered"
//! ([`crate::machine::txn::BufferedValue`]), which one optional value cannot express.
//!
//! The traits use `impl Future` returns, so they are meant for generic code (`G: Getter`),
//! not for `dyn Getter`.

use std::future::Future;

use super::buffer::TxnSnapshot;
use super::snapshot::Snapshot;
use super::transaction::Transaction;
use crate::client::runtime::Runtime;
use crate::error::Error;
use crate::machine::Key;
use crate::machine::raw::Value;

/// Reads one key. Mirrors client-go `kv.Getter`.
pub trait Getter {
    /// The value of `key`, `None` when it has none.
    fn get(&self, key: Key) -> impl Future<Output = Result<Option<Value>, Error>>;
}

/// Reads many keys at once. Mirrors client-go `kv.BatchGetter`.
pub trait BatchGetter {
    /// The values of `keys`, aligned with them (`None` where absent).
    fn batch_get(&self, keys: Vec<Key>) -> impl Future<Output = Result<Vec<Option<Value>>, Error>>;
}

/// Reads see the transaction's own writes first ([`Transaction::get`]).
impl<R: Runtime> Getter for Transaction<R> {
    fn get(&self, key: Key) -> impl Future<Output = Result<Option<Value>, Error>> {
        Transaction::get(self, key)
    }
}

/// Reads see the transaction's own writes first ([`Transaction::batch_get`]).
impl<R: Runtime> BatchGetter for Transaction<R> {
    fn batch_get(&self, keys: Vec<Key>) -> impl Future<Output = Result<Vec<Option<Value>>, Error>> {
        Transaction::batch_get(self, keys)
    }
}

/// Committed data at the snapshot's timestamp ([`Snapshot::get`]).
impl<R: Runtime> Getter for Snapshot<R> {
    fn get(&self, key: Key) -> impl Future<Output = Result<Option<Value>, Error>> {
        Snapshot::get(self, key)
    }
}

/// Committed data at the snapshot's timestamp ([`Snapshot::batch_get`]).
impl<R: Runtime> BatchGetter for Snapshot<R> {
    fn batch_get(&self, keys: Vec<Key>) -> impl Future<Output = Result<Vec<Option<Value>>, Error>> {
        Snapshot::batch_get(self, keys)
    }
}

/// Committed data at the transaction's start timestamp, without its writes
/// ([`TxnSnapshot::get`]).
impl<R: Runtime> Getter for TxnSnapshot<'_, R> {
    fn get(&self, key: Key) -> impl Future<Output = Result<Option<Value>, Error>> {
        TxnSnapshot::get(self, key)
    }
}

/// Committed data at the transaction's start timestamp, without its writes
/// ([`TxnSnapshot::batch_get`]).
impl<R: Runtime> BatchGetter for TxnSnapshot<'_, R> {
    fn batch_get(&self, keys: Vec<Key>) -> impl Future<Output = Result<Vec<Option<Value>>, Error>> {
        TxnSnapshot::batch_get(self, keys)
    }
}
