//! Traffic of TiKV data commands by where their store is: the same zone as the client or
//! another one ([`AccessLocation`]), and whether they were stale reads.
//!
//! client-go counts this in its `networkCollector` (`internal/locate/metrics_collector.go`):
//! each request's and reply's protobuf size (`tikvrpc.Request.GetSize`, the "unpacked" bytes
//! of `ExecDetails`), split into cross-zone traffic, plus the stale-read byte and request
//! counters by zone. Here the counts are kept per client in [`super::Shared`] and read with
//! [`crate::client::Cluster::traffic_stats`].
//!
//! Only requests whose location is known are counted: the client has a zone
//! ([`crate::config::Config::zone_label`]) and so has the target store (its `zone` label).
//! A client without a zone label pays one comparison per request; the size of a request
//! and of its reply (protobuf `encoded_len`) is computed only for counted ones. Commands
//! travelling in `BatchCommands` (all data reads and writes) are counted; administrative
//! unary calls (region splits, store probes) are not.

use super::store::AccessLocation;

/// What was sent to and received from the stores of one kind of location.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Requests sent (each attempt counts).
    pub requests: u64,
    /// Their protobuf size, with the request context.
    pub bytes_sent: u64,
    /// The protobuf size of the replies received.
    pub bytes_received: u64,
}

/// A client's data-command traffic by access location; see the module docs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficStats {
    /// To stores in the client's zone (client-go `UnpackedBytes*KVTotal` minus cross-zone;
    /// `ReadRequest{Leader,Follower}LocalBytes` for reads).
    pub local_zone: Traffic,
    /// To stores in other zones (client-go `UnpackedBytes*KVCrossZone`,
    /// `ReadRequest{Leader,Follower}RemoteBytes`).
    pub cross_zone: Traffic,
    /// Stale reads to stores in the client's zone (client-go `StaleReadLocalOutBytes`,
    /// `StaleReadLocalInBytes`, `StaleReadReqLocalCounter`); also counted in `local_zone`.
    pub stale_read_local_zone: Traffic,
    /// Stale reads to stores in other zones (client-go `StaleReadRemoteOutBytes`,
    /// `StaleReadRemoteInBytes`, `StaleReadReqCrossZoneCounter`); also counted in
    /// `cross_zone`.
    pub stale_read_cross_zone: Traffic,
}

impl TrafficStats {
    /// The counters of `location` (and of its stale reads), if it is known.
    fn slots(&mut self, location: AccessLocation) -> Option<(&mut Traffic, &mut Traffic)> {
        match location {
            AccessLocation::Unknown => None,
            AccessLocation::LocalZone => {
                Some((&mut self.local_zone, &mut self.stale_read_local_zone))
            }
            AccessLocation::CrossZone => {
                Some((&mut self.cross_zone, &mut self.stale_read_cross_zone))
            }
        }
    }

    /// Counts a request of `bytes` sent to a store at `location`. Mirrors client-go
    /// `networkCollector.onReq`.
    pub(crate) fn on_request(&mut self, location: AccessLocation, stale_read: bool, bytes: usize) {
        if let Some((all, stale)) = self.slots(location) {
            all.requests += 1;
            all.bytes_sent += bytes as u64;
            if stale_read {
                stale.requests += 1;
                stale.bytes_sent += bytes as u64;
            }
        }
    }

    /// Counts a reply of `bytes` from a store at `location`. Mirrors client-go
    /// `networkCollector.onResp`.
    pub(crate) fn on_reply(&mut self, location: AccessLocation, stale_read: bool, bytes: usize) {
        if let Some((all, stale)) = self.slots(location) {
            all.bytes_received += bytes as u64;
            if stale_read {
                stale.bytes_received += bytes as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known locations are counted, stale reads in both their zone's and the stale-read
    /// counters; unknown ones are not.
    #[test]
    fn traffic_is_counted_by_known_location() {
        let mut t = TrafficStats::default();
        t.on_request(AccessLocation::LocalZone, false, 40);
        t.on_reply(AccessLocation::LocalZone, false, 70);
        t.on_request(AccessLocation::CrossZone, true, 50);
        t.on_reply(AccessLocation::CrossZone, true, 90);
        t.on_request(AccessLocation::Unknown, false, 1_000);
        t.on_reply(AccessLocation::Unknown, true, 1_000);
        let traffic = |requests, bytes_sent, bytes_received| Traffic {
            requests,
            bytes_sent,
            bytes_received,
        };
        assert_eq!(t.local_zone, traffic(1, 40, 70));
        assert_eq!(t.stale_read_local_zone, Traffic::default());
        assert_eq!(t.cross_zone, traffic(1, 50, 90));
        assert_eq!(t.stale_read_cross_zone, traffic(1, 50, 90));
    }
}
