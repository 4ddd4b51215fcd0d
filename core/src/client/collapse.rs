//! Request collapsing: concurrent region-wide `ResolveLock` requests for the same transaction
//! and region travel once; every caller gets the one reply.
//!
//! Many readers meeting locks of one transaction in one region would each send the same
//! region-wide `ResolveLock` (no keys, no `txn_infos`). The first becomes the flight's leader
//! and is sent; the others join it and are answered with its result (under their own request
//! ids) when it completes. Lite resolves (with keys) and the GC worker's batch resolves (with
//! `txn_infos`) are never collapsed.
//!
//! Mirrors client-go `internal/client/client_collapse.go` (`reqCollapse.tryCollapseRequest`,
//! `resolveLockCollapseKey`: region id, start version, `is_async`). One difference: a caller
//! that joined a flight waits for the flight's own deadline rather than its own (every
//! `ResolveLock` uses the same short read timeout, so the two agree in practice).

use std::collections::HashMap;
use std::sync::Mutex;

use super::sync::{Inbox, lock};
use crate::error::Error;
use crate::machine::{Input, IoId, TikvCmd, TikvRequest, TikvResponse};

/// What identifies identical region-wide `ResolveLock` requests: region id, transaction start
/// version, TiKV-side async resolve. Mirrors client-go `resolveLockCollapseKey`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct CollapseKey {
    region_id: u64,
    start_version: u64,
    is_async: bool,
}

/// The collapse key of `request` (whose `Context` is `shared` when it carries none itself,
/// see `crate::machine::shared_ctx`), or `None` when it must not be collapsed (anything but
/// a region-wide `ResolveLock`). Mirrors client-go `reqCollapse.tryCollapseRequest`.
pub(crate) fn collapse_key(
    request: &TikvRequest,
    shared: Option<&tikv_proto::kvrpcpb::Context>,
) -> Option<CollapseKey> {
    let TikvRequest::Cmd(TikvCmd::ResolveLock(r)) = request else {
        return None;
    };
    if !r.keys.is_empty() || !r.txn_infos.is_empty() {
        return None;
    }
    Some(CollapseKey {
        region_id: r.context.as_deref().or(shared).map_or(0, |c| c.region_id),
        start_version: r.start_version,
        is_async: r.is_async,
    })
}

/// The callers waiting on one flight: their request ids and inboxes.
type Waiters = Vec<(IoId, Inbox<Input>)>;

/// The flights in progress (client-go's `resolveRegionSf` singleflight group).
#[derive(Default)]
pub(crate) struct ReqCollapse {
    flights: Mutex<HashMap<CollapseKey, Waiters>>,
}

impl ReqCollapse {
    /// Adds the caller `(id, reply)` to the flight of `key`. Returns `true` when no flight was
    /// in progress: the caller leads a new flight and must send the request, then report its
    /// result with [`ReqCollapse::finish`].
    pub fn join(&self, key: CollapseKey, id: IoId, reply: &Inbox<Input>) -> bool {
        let mut flights = lock(&self.flights);
        match flights.get_mut(&key) {
            Some(waiters) => {
                tracing::debug!(
                    region = key.region_id,
                    start_ts = key.start_version,
                    "collapse ResolveLock into the request in flight"
                );
                waiters.push((id, reply.clone()));
                false
            }
            None => {
                flights.insert(key, vec![(id, reply.clone())]);
                true
            }
        }
    }

    /// Ends the flight of `key`: every caller that joined it gets `result` under its own id.
    pub fn finish(&self, key: CollapseKey, result: Result<TikvResponse, Error>) {
        let waiters = lock(&self.flights).remove(&key).unwrap_or_default();
        for (id, reply) in waiters {
            let _ = reply.push(Input::Tikv {
                id,
                result: result.clone(),
            });
        }
    }

    /// Number of flights in progress.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        lock(&self.flights).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::TikvCmdResponse;
    use bytes::Bytes;
    use tikv_proto::kvrpcpb;

    fn resolve(region: u64, start: u64, keys: Vec<Bytes>) -> TikvRequest {
        TikvRequest::Cmd(TikvCmd::ResolveLock(Box::new(
            kvrpcpb::ResolveLockRequest {
                context: Some(Box::new(kvrpcpb::Context {
                    region_id: region,
                    ..Default::default()
                })),
                start_version: start,
                commit_version: start + 1,
                keys,
                ..Default::default()
            },
        )))
    }

    #[test]
    fn only_region_wide_resolve_lock_collapses() {
        let a = collapse_key(&resolve(1, 10, vec![]), None).unwrap();
        assert_eq!(a, collapse_key(&resolve(1, 10, vec![]), None).unwrap());
        assert_ne!(a, collapse_key(&resolve(2, 10, vec![]), None).unwrap());
        assert_ne!(a, collapse_key(&resolve(1, 11, vec![]), None).unwrap());
        assert!(collapse_key(&resolve(1, 10, vec![Bytes::from_static(b"k")]), None).is_none());
        let mut batch = kvrpcpb::ResolveLockRequest {
            txn_infos: vec![kvrpcpb::TxnInfo {
                txn: 10,
                status: 0,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(
            collapse_key(
                &TikvRequest::Cmd(TikvCmd::ResolveLock(Box::new(batch.clone()))),
                None
            )
            .is_none()
        );
        batch.txn_infos.clear();
        batch.is_async = true;
        let async_key = collapse_key(
            &TikvRequest::Cmd(TikvCmd::ResolveLock(Box::new(batch))),
            None,
        )
        .unwrap();
        assert!(async_key.is_async);
        let get = TikvRequest::Cmd(TikvCmd::Get(Default::default()));
        assert!(collapse_key(&get, None).is_none());
        // A request whose context travels beside it is keyed by that context's region.
        let mut bare = resolve(1, 10, vec![]);
        crate::machine::request::context_slot(&mut bare)
            .unwrap()
            .take();
        let shared = kvrpcpb::Context {
            region_id: 2,
            ..Default::default()
        };
        assert_eq!(
            collapse_key(&bare, Some(&shared)),
            collapse_key(&resolve(2, 10, vec![]), None)
        );
    }

    #[test]
    fn joiners_get_the_leaders_reply_under_their_own_ids() {
        let c = ReqCollapse::default();
        let key = collapse_key(&resolve(1, 10, vec![]), None).unwrap();
        let (a, b) = (Inbox::new(), Inbox::new());
        assert!(c.join(key, IoId(1), &a), "the first caller leads");
        assert!(!c.join(key, IoId(2), &b), "the second joins");
        assert!(!c.join(key, IoId(3), &a));
        let other = collapse_key(&resolve(2, 10, vec![]), None).unwrap();
        assert!(
            c.join(other, IoId(4), &b),
            "another region is its own flight"
        );
        assert_eq!(c.in_flight(), 2);

        let reply = TikvResponse::Cmd(TikvCmdResponse::ResolveLock(Box::default()));
        c.finish(key, Ok(reply.clone()));
        assert_eq!(c.in_flight(), 1);
        let mut got = Vec::new();
        for inbox in [&a, &b] {
            got.extend(inbox.close_and_take());
        }
        let mut ids: Vec<IoId> = got.iter().map(Input::id).collect();
        ids.sort();
        assert_eq!(ids, vec![IoId(1), IoId(2), IoId(3)]);
        assert!(
            got.iter()
                .all(|i| matches!(i, Input::Tikv { result: Ok(r), .. } if *r == reply))
        );

        // A finished key starts a new flight; errors fan out too.
        let c2 = Inbox::new();
        assert!(c.join(key, IoId(5), &c2));
        c.finish(key, Err(Error::Closed));
        assert!(matches!(
            &c2.close_and_take()[..],
            [Input::Tikv {
                id: IoId(5),
                result: Err(Error::Closed)
            }]
        ));
    }
}
