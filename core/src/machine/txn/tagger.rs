//! Per-request resource group tags computed by a caller's callback (Top SQL). A transaction
//! or snapshot without a static `resource_group_tag` asks its [`ResourceGroupTagger`] for the
//! tag of each read and write request it builds, naming the request's command.
//! Mirrors client-go `tikvrpc.ResourceGroupTagger` and its uses in `KVSnapshot.get`,
//! `batchGetSingleRegion`, `Scanner.getData`, `buildPrewriteRequest`, `actionCommit`,
//! `actionCleanup` and `actionPessimisticLock`.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

/// The command a tagged request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TaggedCommand {
    /// A point read (`KvGet`).
    Get,
    /// A multi-key read (`KvBatchGet`).
    BatchGet,
    /// A range read (`KvScan`).
    Scan,
    /// The first phase of a commit (`KvPrewrite`).
    Prewrite,
    /// The second phase of a commit (`KvCommit`).
    Commit,
    /// The rollback of prewritten keys (`KvBatchRollback`).
    BatchRollback,
    /// A pessimistic lock (`KvPessimisticLock`).
    PessimisticLock,
}

impl TaggedCommand {
    /// The command's name as client-go's `tikvrpc.CmdType.String` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            TaggedCommand::Get => "Get",
            TaggedCommand::BatchGet => "BatchGet",
            TaggedCommand::Scan => "Scan",
            TaggedCommand::Prewrite => "Prewrite",
            TaggedCommand::Commit => "Commit",
            TaggedCommand::BatchRollback => "BatchRollback",
            TaggedCommand::PessimisticLock => "PessimisticLock",
        }
    }
}

/// What a tagger learns about the request it tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestInfo {
    /// The request's command.
    pub command: TaggedCommand,
}

impl RequestInfo {
    /// The info of a request carrying `command`.
    pub fn new(command: TaggedCommand) -> Self {
        RequestInfo { command }
    }
}

/// The callback of a [`ResourceGroupTagger`]: the tag of the request described.
pub type TaggerFn = Arc<dyn Fn(&RequestInfo) -> Vec<u8> + Send + Sync>;

/// A callback computing `Context.resource_group_tag` per request; used only when no static
/// tag is set. Mirrors client-go `tikvrpc.ResourceGroupTagger`.
#[derive(Clone)]
pub struct ResourceGroupTagger(TaggerFn);

impl ResourceGroupTagger {
    /// Wraps `f`.
    pub fn new(f: TaggerFn) -> Self {
        ResourceGroupTagger(f)
    }

    /// The tag of a request carrying `command`.
    pub fn tag(&self, command: TaggedCommand) -> Bytes {
        Bytes::from((self.0)(&RequestInfo::new(command)))
    }
}

impl fmt::Debug for ResourceGroupTagger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResourceGroupTagger(..)")
    }
}

/// Two taggers are equal when they share the same callback.
impl PartialEq for ResourceGroupTagger {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// The tag of a request carrying `command`: the static `tag` when set, else the tagger's,
/// else none. Mirrors client-go's `resourceGroupTag == nil && resourceGroupTagger != nil`.
pub fn resolve_tag(
    tag: &Bytes,
    tagger: Option<&ResourceGroupTagger>,
    command: TaggedCommand,
) -> Bytes {
    match tagger {
        Some(t) if tag.is_empty() => t.tag(command),
        _ => tag.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_tag_wins_over_the_tagger() {
        let t = ResourceGroupTagger::new(Arc::new(|r: &RequestInfo| {
            r.command.as_str().as_bytes().to_vec()
        }));
        assert_eq!(
            &resolve_tag(&Bytes::new(), Some(&t), TaggedCommand::Prewrite)[..],
            b"Prewrite"
        );
        assert_eq!(
            &resolve_tag(&Bytes::from_static(b"s"), Some(&t), TaggedCommand::Get)[..],
            b"s"
        );
        assert!(resolve_tag(&Bytes::new(), None, TaggedCommand::Get).is_empty());
        assert_eq!(t, t.clone());
    }
}
