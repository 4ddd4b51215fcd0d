//! A small part of PD's HTTP API, served on the PD port next to gRPC like PD
//! does: `GET /pd/api/v1/regions`, `/pd/api/v1/region/id/{id}`,
//! `/pd/api/v1/stores` and `/pd/api/v1/version`. Test suites of other TiKV
//! clients (client-rust's `tests/common/ctl.rs` counts regions this way) read
//! cluster facts through it.
//!
//! The JSON shapes follow PD `server/api/region.go` (`RegionInfo`,
//! `RegionsInfo`: keys as upper-case hex, `epoch`, `peers`, `leader`) and
//! `server/api/store.go` (`StoresInfo`); only the fields the mockstore models
//! are filled. JSON is written by hand: the shapes are flat and fixed.

use std::fmt::Write;

use tikv_proto::metapb;

use crate::cluster::Cluster;

/// An answer to an HTTP API request: status code and JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpAnswer {
    /// HTTP status code.
    pub status: u16,
    /// JSON body.
    pub body: String,
}

impl HttpAnswer {
    fn ok(body: String) -> Self {
        HttpAnswer { status: 200, body }
    }

    fn not_found(msg: &str) -> Self {
        HttpAnswer {
            status: 404,
            body: json_string(msg),
        }
    }
}

/// Answers `GET path` from the cluster's state; unknown paths get 404 like
/// PD's router.
pub fn answer(cluster: &Cluster, method: &str, path: &str) -> HttpAnswer {
    if method != "GET" {
        return HttpAnswer {
            status: 405,
            body: json_string("only GET is served by the mockstore's PD HTTP API"),
        };
    }
    let path = path.trim_end_matches('/');
    match path {
        "/pd/api/v1/regions" => {
            let regions = cluster.regions();
            let mut body = format!("{{\"count\":{},\"regions\":[", regions.len());
            for (i, r) in regions.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                region_json(&mut body, r, cluster.leader_of(r.id).as_ref());
            }
            body.push_str("]}");
            HttpAnswer::ok(body)
        }
        "/pd/api/v1/stores" => {
            let stores = cluster.stores();
            let mut body = format!("{{\"count\":{},\"stores\":[", stores.len());
            for (i, s) in stores.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                let state = if s.up { "Up" } else { "Disconnected" };
                let _ = write!(
                    body,
                    "{{\"store\":{{\"id\":{},\"address\":{},\"state_name\":\"{state}\"}}}}",
                    s.id,
                    json_string(&s.address)
                );
            }
            body.push_str("]}");
            HttpAnswer::ok(body)
        }
        "/pd/api/v1/version" => HttpAnswer::ok("{\"version\":\"v8.5.0\"}".to_string()),
        _ => {
            if let Some(id) = path.strip_prefix("/pd/api/v1/region/id/") {
                let Ok(id) = id.parse::<u64>() else {
                    return HttpAnswer {
                        status: 400,
                        body: json_string("invalid region id"),
                    };
                };
                return match cluster.region(id) {
                    Some(r) => {
                        let mut body = String::new();
                        region_json(&mut body, &r, cluster.leader_of(id).as_ref());
                        HttpAnswer::ok(body)
                    }
                    // PD answers a missing region with `null`.
                    None => HttpAnswer::ok("null".to_string()),
                };
            }
            HttpAnswer::not_found("404 page not found")
        }
    }
}

fn region_json(out: &mut String, r: &metapb::Region, leader: Option<&metapb::Peer>) {
    let epoch = r.region_epoch.unwrap_or_default();
    let _ = write!(
        out,
        "{{\"id\":{},\"start_key\":\"{}\",\"end_key\":\"{}\",\"epoch\":{{\"conf_ver\":{},\"version\":{}}},\"peers\":[",
        r.id,
        hex_upper(&r.start_key),
        hex_upper(&r.end_key),
        epoch.conf_ver,
        epoch.version
    );
    for (i, p) in r.peers.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        peer_json(out, p);
    }
    out.push(']');
    if let Some(l) = leader {
        out.push_str(",\"leader\":");
        peer_json(out, l);
    }
    out.push('}');
}

fn peer_json(out: &mut String, p: &metapb::Peer) {
    let role = match metapb::PeerRole::try_from(p.role) {
        Ok(metapb::PeerRole::Learner) => "Learner",
        Ok(metapb::PeerRole::IncomingVoter) => "IncomingVoter",
        Ok(metapb::PeerRole::DemotingVoter) => "DemotingVoter",
        _ => "Voter",
    };
    let _ = write!(
        out,
        "{{\"id\":{},\"store_id\":{},\"role_name\":\"{role}\"}}",
        p.id, p.store_id
    );
}

fn hex_upper(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02X}");
    }
    s
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ClusterConfig;

    // client-rust `tests/common/ctl.rs` `get_region_count` reads `count` of
    // `GET /pd/api/v1/regions`.
    #[test]
    fn regions_count_follows_splits() {
        let mut c = Cluster::new(ClusterConfig::default());
        let a = answer(&c, "GET", "/pd/api/v1/regions");
        assert_eq!(a.status, 200);
        assert!(a.body.starts_with("{\"count\":1,"), "{}", a.body);
        c.split_keys(&[b"k".to_vec(), b"t".to_vec()]);
        let a = answer(&c, "GET", "/pd/api/v1/regions/");
        assert!(a.body.starts_with("{\"count\":3,"), "{}", a.body);
        assert!(a.body.contains("\"end_key\":\"6B\""), "{}", a.body);
        assert_eq!(answer(&c, "GET", "/pd/api/v1/nope").status, 404);
        assert_eq!(answer(&c, "POST", "/pd/api/v1/regions").status, 405);
        assert_eq!(answer(&c, "GET", "/pd/api/v1/region/id/x").status, 400);
        assert_eq!(answer(&c, "GET", "/pd/api/v1/region/id/999").body, "null");
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
