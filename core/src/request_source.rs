//! Request-source labels: the `Context.request_source` string TiKV uses to account a request's
//! resources and label its metrics (`internal_gc`, `external_Select_lightning`, ...).
//!
//! Mirrors client-go `util/request_source.go`: a [`RequestSource`] says whether the request is
//! internal (issued by the system: GC, statistics, DDL...) or external (a user's), its type,
//! and an optional explicit type (the tool or task behind it: `br`, `lightning`, `import`...);
//! [`RequestSource::label`] joins them the way client-go's `GetRequestSource` does. Every
//! option that takes a request source takes a [`RequestSource`] too (it converts into the
//! label string):
//!
//! ```
//! use tikv_core::request_source::{RequestSource, EXPLICIT_TYPE_BR, INTERNAL_TXN_GC};
//!
//! assert_eq!(RequestSource::internal(INTERNAL_TXN_GC).label(), "internal_gc");
//! let restore = RequestSource::external("Insert").with_explicit_type(EXPLICIT_TYPE_BR);
//! assert_eq!(restore.label(), "external_Insert_br");
//! let source: String = restore.into();
//! # assert_eq!(source, "external_Insert_br");
//! ```

use std::fmt;

/// Internal requests that consume few resources (client-go `InternalTxnOthers`).
pub const INTERNAL_TXN_OTHERS: &str = "others";
/// Garbage-collection requests (client-go `InternalTxnGC`).
pub const INTERNAL_TXN_GC: &str = "gc";
/// Miscellaneous metadata requests (client-go `InternalTxnMeta`, the same label as
/// [`INTERNAL_TXN_OTHERS`]).
pub const INTERNAL_TXN_META: &str = INTERNAL_TXN_OTHERS;
/// Statistics requests (client-go `InternalTxnStats`).
pub const INTERNAL_TXN_STATS: &str = "stats";

/// No explicit type (client-go `ExplicitTypeEmpty`).
pub const EXPLICIT_TYPE_EMPTY: &str = "";
/// TiDB Lightning (client-go `ExplicitTypeLightning`, kept for compatibility; `import`
/// replaced it).
pub const EXPLICIT_TYPE_LIGHTNING: &str = "lightning";
/// Backup and restore (client-go `ExplicitTypeBR`).
pub const EXPLICIT_TYPE_BR: &str = "br";
/// Dumpling (client-go `ExplicitTypeDumpling`).
pub const EXPLICIT_TYPE_DUMPLING: &str = "dumpling";
/// Background tasks (client-go `ExplicitTypeBackground`).
pub const EXPLICIT_TYPE_BACKGROUND: &str = "background";
/// DDL (client-go `ExplicitTypeDDL`).
pub const EXPLICIT_TYPE_DDL: &str = "ddl";
/// Statistics (client-go `ExplicitTypeStats`).
pub const EXPLICIT_TYPE_STATS: &str = "stats";
/// Import (client-go `ExplicitTypeImport`).
pub const EXPLICIT_TYPE_IMPORT: &str = "import";

/// Every explicit type (client-go `ExplicitTypeList`).
pub const EXPLICIT_TYPES: [&str; 8] = [
    EXPLICIT_TYPE_EMPTY,
    EXPLICIT_TYPE_LIGHTNING,
    EXPLICIT_TYPE_BR,
    EXPLICIT_TYPE_DUMPLING,
    EXPLICIT_TYPE_BACKGROUND,
    EXPLICIT_TYPE_DDL,
    EXPLICIT_TYPE_STATS,
    EXPLICIT_TYPE_IMPORT,
];

/// The scope of internal requests (client-go `InternalRequest`).
pub const INTERNAL_REQUEST: &str = "internal";
/// The prefix of internal requests' labels (client-go `InternalRequestPrefix`).
pub const INTERNAL_REQUEST_PREFIX: &str = "internal_";
/// The scope of external requests (client-go `ExternalRequest`).
pub const EXTERNAL_REQUEST: &str = "external";
/// The label of a source with neither type nor explicit type (client-go `SourceUnknown`).
pub const SOURCE_UNKNOWN: &str = "unknown";

/// Where a request comes from; see the module docs. Mirrors client-go `util.RequestSource`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RequestSource {
    /// Issued by the system rather than a user (client-go `RequestSourceInternal`).
    pub internal: bool,
    /// The kind of request, for example [`INTERNAL_TXN_GC`] or a statement type (client-go
    /// `RequestSourceType`).
    pub source_type: String,
    /// The tool or task behind it, for example [`EXPLICIT_TYPE_BR`] (client-go
    /// `ExplicitRequestSourceType`).
    pub explicit_type: String,
}

impl RequestSource {
    /// An internal request of type `source_type`. Mirrors client-go `WithInternalSourceType`.
    pub fn internal(source_type: impl Into<String>) -> Self {
        RequestSource {
            internal: true,
            source_type: source_type.into(),
            explicit_type: String::new(),
        }
    }

    /// An internal request of type `source_type` run by `task`. Mirrors client-go
    /// `WithInternalSourceAndTaskType`.
    pub fn internal_task(source_type: impl Into<String>, task: impl Into<String>) -> Self {
        RequestSource::internal(source_type).with_explicit_type(task)
    }

    /// An external (user) request of type `source_type`.
    pub fn external(source_type: impl Into<String>) -> Self {
        RequestSource {
            internal: false,
            source_type: source_type.into(),
            explicit_type: String::new(),
        }
    }

    /// This source with the explicit type `explicit_type`. Mirrors client-go
    /// `SetExplicitRequestSourceType`.
    pub fn with_explicit_type(mut self, explicit_type: impl Into<String>) -> Self {
        self.explicit_type = explicit_type.into();
        self
    }

    /// The label sent as `Context.request_source`: `origin_type[_explicit]`, the origin
    /// `internal` or `external`, the type `unknown` when only an explicit type is set, the
    /// explicit type left out when empty or equal to the type; `unknown` alone when neither
    /// type is set. Mirrors client-go `RequestSource.GetRequestSource` /
    /// `BuildRequestSource`.
    pub fn label(&self) -> String {
        if self.source_type.is_empty() && self.explicit_type.is_empty() {
            return SOURCE_UNKNOWN.to_owned();
        }
        let origin = if self.internal {
            INTERNAL_REQUEST
        } else {
            EXTERNAL_REQUEST
        };
        let source = if self.source_type.is_empty() {
            SOURCE_UNKNOWN
        } else {
            &self.source_type
        };
        let mut label = format!("{origin}_{source}");
        if !self.explicit_type.is_empty() && self.explicit_type != self.source_type {
            label.push('_');
            label.push_str(&self.explicit_type);
        }
        label
    }

    /// Whether this source is internal, as its label says. Mirrors client-go
    /// `IsRequestSourceInternal`.
    pub fn is_internal(&self) -> bool {
        is_internal_request(&self.label())
    }
}

impl fmt::Display for RequestSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

impl From<RequestSource> for String {
    fn from(source: RequestSource) -> String {
        source.label()
    }
}

/// Whether the request-source label `label` is an internal one. Mirrors client-go
/// `IsInternalRequest`.
pub fn is_internal_request(label: &str) -> bool {
    label.starts_with(INTERNAL_REQUEST)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// client-go `GetRequestSource`'s rules, case by case.
    #[test]
    fn labels_follow_client_go() {
        assert_eq!(RequestSource::default().label(), "unknown");
        assert_eq!(RequestSource::internal("").label(), "unknown");
        assert_eq!(
            RequestSource::internal(INTERNAL_TXN_GC).label(),
            "internal_gc"
        );
        assert_eq!(RequestSource::external("Select").label(), "external_Select");
        assert_eq!(
            RequestSource::internal_task(INTERNAL_TXN_STATS, EXPLICIT_TYPE_LIGHTNING).label(),
            "internal_stats_lightning"
        );
        assert_eq!(
            RequestSource::internal_task(INTERNAL_TXN_STATS, EXPLICIT_TYPE_STATS).label(),
            "internal_stats",
            "an explicit type equal to the type is not repeated"
        );
        assert_eq!(
            RequestSource::external("")
                .with_explicit_type(EXPLICIT_TYPE_BR)
                .label(),
            "external_unknown_br"
        );
        assert_eq!(
            RequestSource::internal(INTERNAL_TXN_META).label(),
            "internal_others"
        );
        assert_eq!(
            String::from(RequestSource::external("Insert").with_explicit_type("import")),
            "external_Insert_import"
        );
        assert_eq!(RequestSource::internal("gc").to_string(), "internal_gc");
    }

    #[test]
    fn internal_labels_are_told_apart() {
        assert!(is_internal_request("internal_gc"));
        assert!(!is_internal_request("external_Select"));
        assert!(!is_internal_request("unknown"));
        assert!(RequestSource::internal("ddl").is_internal());
        assert!(!RequestSource::external("Select").is_internal());
        assert!(
            !RequestSource::internal("").is_internal(),
            "unknown, like client-go"
        );
        assert_eq!(EXPLICIT_TYPES.len(), 8);
    }
}
