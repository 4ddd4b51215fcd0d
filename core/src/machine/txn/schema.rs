//! The schema lease check of a commit: a user-supplied [`SchemaLeaseChecker`] that says
//! whether the schema the transaction was built against (its schema version) is still valid
//! at a timestamp. The committer calls it at the commit timestamp (2PC), at
//! `start_ts + elapsed` before prewrite (async commit and 1PC, whose commit timestamp is fixed
//! during prewrite), and at a fresh timestamp when prewrite reports an assertion failure
//! (a schema change turns a false assertion failure into [`Error::SchemaChanged`]). A failing
//! check abandons the commit, whose prewrite is then rolled back.
//!
//! Mirrors client-go `txnkv/transaction/2pc.go` (`SchemaLeaseChecker`, `SchemaVer`,
//! `checkSchemaValid`, `calculateMaxCommitTS`, `checkSchemaOnAssertionFail`) and `txn.go`
//! (`SetSchemaLeaseChecker`, `SetSchemaVer`).

use std::fmt;
use std::sync::Arc;

use crate::error::Error;

/// Decides whether the schema a transaction started with is still valid at a timestamp.
/// Mirrors client-go `SchemaLeaseChecker` (TiDB's domain implements it with the schema
/// validator).
pub trait SchemaLeaseChecker: Send + Sync {
    /// `Ok` when the schema of version `start_schema_ver` (the transaction's, see
    /// [`SchemaCheck::new`]) has not changed in a way that affects the transaction up to
    /// `txn_ts`; `Err(reason)` otherwise. Mirrors client-go `CheckBySchemaVer`.
    fn check_by_schema_ver(&self, txn_ts: u64, start_schema_ver: i64) -> Result<(), String>;
}

impl<F: Fn(u64, i64) -> Result<(), String> + Send + Sync> SchemaLeaseChecker for F {
    fn check_by_schema_ver(&self, txn_ts: u64, start_schema_ver: i64) -> Result<(), String> {
        self(txn_ts, start_schema_ver)
    }
}

/// A checker together with the transaction's schema version. Cheap to clone.
#[derive(Clone)]
pub struct SchemaCheck {
    checker: Arc<dyn SchemaLeaseChecker>,
    schema_ver: i64,
}

impl SchemaCheck {
    /// Checks the schema version `schema_ver` (client-go `SetSchemaVer`) with `checker`
    /// (client-go `SetSchemaLeaseChecker`).
    pub fn new(checker: Arc<dyn SchemaLeaseChecker>, schema_ver: i64) -> Self {
        SchemaCheck {
            checker,
            schema_ver,
        }
    }

    /// The schema version checked.
    pub fn schema_ver(&self) -> i64 {
        self.schema_ver
    }

    /// Runs the check of transaction `start_ts` at `check_ts`: [`Error::SchemaChanged`] when
    /// the checker refuses. Mirrors client-go `twoPhaseCommitter.checkSchemaValid`.
    pub fn check(&self, start_ts: u64, check_ts: u64) -> Result<(), Error> {
        self.checker
            .check_by_schema_ver(check_ts, self.schema_ver)
            .map_err(|reason| Error::SchemaChanged {
                start_ts,
                check_ts,
                reason,
            })
    }
}

impl fmt::Debug for SchemaCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchemaCheck")
            .field("schema_ver", &self.schema_ver)
            .finish_non_exhaustive()
    }
}

/// Two checks are equal when they use the same checker and version.
impl PartialEq for SchemaCheck {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.checker, &other.checker) && self.schema_ver == other.schema_ver
    }
}
