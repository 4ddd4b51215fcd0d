//! PD service discovery: cluster id, leader and followers, as a sans-IO machine.
//!
//! [`PdDiscovery`] tells the driver which PD endpoint to ask `GetMembers` next and learns from
//! the answers:
//!
//! 1. **Cluster id** (client `initClusterID`): every configured endpoint is asked in turn; the
//!    first answer with a header gives the cluster id, and an endpoint reporting a different
//!    cluster id is a fatal configuration error.
//! 2. **Members** (client `updateMember`): the known endpoints are asked in sorted order until
//!    one answers with this cluster's id and a leader that has client URLs; the member list
//!    then replaces the endpoint list, the leader's URL (the one matching the TLS setting) is
//!    the endpoint for requests and the `Tso` stream, the other members are followers.
//! 3. A round in which no endpoint answers is retried after a `BoPDRPC` backoff; during
//!    initialisation at most `max_init_rounds` rounds are tried, after that
//!    [`PdEvent::Failed`] ends the machine. Once initialised, the members are refreshed every
//!    `member_update_interval` and whenever the driver reports a failure of the leader
//!    ([`PdDiscovery::handle_rpc_failure`], client `ScheduleCheckMemberChanged`).
//!
//! Endpoints are handled as `host:port`: the scheme of configured addresses and member URLs is
//! stripped (TLS is a property of the whole client).
//!
//! # Driving contract
//!
//! Inputs: [`PdDiscovery::handle_members`], [`PdDiscovery::handle_timeout`],
//! [`PdDiscovery::handle_rpc_failure`], [`PdDiscovery::handle_rpc_success`],
//! [`PdDiscovery::schedule_check`]. After each, drain [`PdDiscovery::poll_action`] (a
//! `GetMembers` call to make) and [`PdDiscovery::poll_event`], then wait for the next input or
//! [`PdDiscovery::poll_timeout`]. At most one `GetMembers` call is outstanding; an answer with
//! an id other than the outstanding one is ignored.
//!
//! Mirrors the PD Go client `client/servicediscovery/service_discovery.go`
//! (`serviceDiscovery.Init`, `initRetry`, `initClusterID`, `updateMember`, `updateURLs`,
//! `switchLeader`, `updateFollowers`, `updateMemberLoop`, `ScheduleCheckMemberChanged`,
//! `GetServiceClient` with forwarding) and client-go's use of `BoPDRPC` after PD failures.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tikv_proto::pdpb;

use super::backoff::{BackoffKind, Backoffer};
use crate::config::Config;
use crate::error::Error;
use crate::rng::Rng;

/// Settings of the discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PdConfig {
    /// Timeout of a `GetMembers` call while looking for the cluster id (PD client
    /// `option.Timeout`, 3 s).
    pub init_timeout: Duration,
    /// Timeout of a `GetMembers` call while refreshing members (PD client
    /// `UpdateMemberTimeout`, 1 s).
    pub update_timeout: Duration,
    /// Period of the member refresh (PD client `MemberUpdateInterval`, 1 min).
    pub member_update_interval: Duration,
    /// Rounds tried before initialisation gives up (PD client `maxInitClusterRetries`, 100).
    pub max_init_rounds: u32,
    /// Route requests through a follower when the leader is unreachable (client-go
    /// `EnableForwarding`).
    pub enable_forwarding: bool,
    /// Whether the client uses TLS: member URLs with `https` are preferred (PD client
    /// `tlsutil.PickMatchedURL`).
    pub tls: bool,
}

impl PdConfig {
    /// The discovery settings of a client configuration.
    pub fn from_config(config: &Config) -> Self {
        PdConfig {
            init_timeout: config.pd_server_timeout,
            update_timeout: Duration::from_secs(1),
            member_update_interval: config.pd_member_update_interval,
            max_init_rounds: 100,
            enable_forwarding: config.enable_forwarding,
            tls: config.security.is_tls(),
        }
    }
}

impl Default for PdConfig {
    fn default() -> Self {
        PdConfig::from_config(&Config::default())
    }
}

/// A call the driver must make.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PdAction {
    /// Call `PD/GetMembers` on `address` with `request`, failing it after `timeout`; answer
    /// with [`PdDiscovery::handle_members`] carrying `id`.
    GetMembers {
        /// Correlation id.
        id: u64,
        /// `host:port` of the PD server.
        address: Arc<str>,
        /// The request.
        request: pdpb::GetMembersRequest,
        /// Deadline of the call.
        timeout: Duration,
    },
}

/// What the driver learns.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PdEvent {
    /// Initialisation finished: the cluster id and the leader are known.
    Ready {
        /// The cluster id.
        cluster_id: u64,
        /// The leader's `host:port`.
        leader: Arc<str>,
    },
    /// The leader moved; connections (the `Tso` stream) to the old one should be replaced.
    LeaderChanged {
        /// The new leader's `host:port`.
        leader: Arc<str>,
    },
    /// The set of member endpoints changed.
    MembersChanged,
    /// Initialisation gave up (no endpoint answered within the rounds, or the configured
    /// endpoints belong to different clusters). The machine does nothing more.
    Failed(Error),
}

/// Where to send a PD request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PdEndpoint {
    /// The server to call.
    pub address: Arc<str>,
    /// When calling a follower, the leader it must forward to (gRPC metadata
    /// `pd-forwarded-host`); `None` when `address` is the leader.
    pub forward_to: Option<Arc<str>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    InitClusterId { index: usize, found: Option<u64> },
    UpdateMember { urls: Vec<Arc<str>>, index: usize },
    Idle,
    Backoff { until: Instant },
    Failed,
}

/// The PD discovery machine. See the module docs.
#[derive(Debug)]
pub struct PdDiscovery {
    cfg: PdConfig,
    rng: Rng,
    seeds: Vec<Arc<str>>,
    urls: Vec<Arc<str>>,
    cluster_id: Option<u64>,
    leader: Option<Arc<str>>,
    leader_available: bool,
    followers: Vec<Arc<str>>,
    next_follower: usize,
    phase: Phase,
    initialized: bool,
    init_rounds: u32,
    backoff: Backoffer,
    next_update: Option<Instant>,
    check_requested: bool,
    next_id: u64,
    outstanding: Option<u64>,
    last_error: Option<Error>,
    actions: VecDeque<PdAction>,
    events: VecDeque<PdEvent>,
}

/// `host:port` of a PD address or URL (`http://h:p`, `https://h:p/`, `h:p`).
pub fn strip_scheme(url: &str) -> &str {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    rest.trim_end_matches('/')
}

impl PdDiscovery {
    /// Starts discovery from the configured PD `endpoints` (`host:port` or URLs). Fails if
    /// none is given. The first `GetMembers` is ready in [`PdDiscovery::poll_action`].
    pub fn new(
        now: Instant,
        endpoints: &[impl AsRef<str>],
        cfg: PdConfig,
        seed: u64,
    ) -> Result<Self, Error> {
        let mut seeds: Vec<Arc<str>> = endpoints
            .iter()
            .map(|e| strip_scheme(e.as_ref().trim()))
            .filter(|e| !e.is_empty())
            .map(Arc::from)
            .collect();
        seeds.dedup();
        if seeds.is_empty() {
            return Err(Error::invalid("no PD endpoint given"));
        }
        let mut d = PdDiscovery {
            cfg,
            rng: Rng::new(seed),
            urls: seeds.clone(),
            seeds,
            cluster_id: None,
            leader: None,
            leader_available: false,
            followers: Vec::new(),
            next_follower: 0,
            phase: Phase::Idle,
            initialized: false,
            init_rounds: 0,
            backoff: Backoffer::new(0),
            next_update: None,
            check_requested: false,
            next_id: 1,
            outstanding: None,
            last_error: None,
            actions: VecDeque::new(),
            events: VecDeque::new(),
        };
        d.start_init_round(now);
        Ok(d)
    }

    // ---- getters ----------------------------------------------------------------------

    /// The cluster id, once known.
    pub fn cluster_id(&self) -> Option<u64> {
        self.cluster_id
    }

    /// Whether the cluster id and a leader are known.
    pub fn is_ready(&self) -> bool {
        self.initialized
    }

    /// The leader's `host:port`.
    pub fn leader(&self) -> Option<&Arc<str>> {
        self.leader.as_ref()
    }

    /// The followers' `host:port`.
    pub fn followers(&self) -> &[Arc<str>] {
        &self.followers
    }

    /// The endpoints asked in the next member refresh (sorted member URLs, or the configured
    /// endpoints before the first answer).
    pub fn endpoints(&self) -> &[Arc<str>] {
        &self.urls
    }

    /// The last error seen (for the message of a failure).
    pub fn last_error(&self) -> Option<&Error> {
        self.last_error.as_ref()
    }

    /// The header every PD request carries. Mirrors the PD Go client filling
    /// `RequestHeader.ClusterId`.
    pub fn request_header(&self) -> pdpb::RequestHeader {
        pdpb::RequestHeader {
            cluster_id: self.cluster_id.unwrap_or(0),
            ..Default::default()
        }
    }

    /// Checks a PD response header: an error in it, or a cluster id other than ours, is an
    /// [`Error::Pd`]. Mirrors the PD Go client's header checks (`getMembers`,
    /// `updateMember`'s cluster id comparison).
    pub fn check_header(&self, header: Option<&pdpb::ResponseHeader>) -> Result<(), Error> {
        check_header(self.cluster_id, header)
    }

    /// Where to send a PD request now: the leader, or, when forwarding is enabled and the
    /// leader was reported unreachable, a follower (round robin) that forwards to it. `None`
    /// before a leader is known. Mirrors the PD Go client `serviceDiscovery.GetServiceClient`.
    pub fn endpoint(&mut self) -> Option<PdEndpoint> {
        let leader = self.leader.clone()?;
        if self.cfg.enable_forwarding && !self.leader_available && !self.followers.is_empty() {
            let i = self.next_follower % self.followers.len();
            self.next_follower = self.next_follower.wrapping_add(1);
            return Some(PdEndpoint {
                address: self.followers[i].clone(),
                forward_to: Some(leader),
            });
        }
        Some(PdEndpoint {
            address: leader,
            forward_to: None,
        })
    }

    // ---- inputs -----------------------------------------------------------------------

    /// The answer of the `GetMembers` call `id`.
    pub fn handle_members(
        &mut self,
        now: Instant,
        id: u64,
        result: Result<pdpb::GetMembersResponse, Error>,
    ) {
        if self.outstanding != Some(id) {
            return;
        }
        self.outstanding = None;
        match self.phase.clone() {
            Phase::InitClusterId { index, found } => self.on_init_answer(now, index, found, result),
            Phase::UpdateMember { urls, index } => self.on_update_answer(now, urls, index, result),
            Phase::Idle | Phase::Backoff { .. } | Phase::Failed => {}
        }
    }

    /// Time passed: a backoff ends (the next round starts) or the periodic refresh is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Backoff { until } if now >= until => {
                if self.cluster_id.is_none() {
                    self.start_init_round(now);
                } else {
                    if !self.initialized {
                        self.init_rounds += 1;
                    }
                    self.start_update_round(now);
                }
            }
            Phase::Idle if self.next_update.is_some_and(|t| now >= t) => {
                self.start_update_round(now);
            }
            _ => {}
        }
    }

    /// Asks for a member refresh as soon as possible (PD Go client
    /// `ScheduleCheckMemberChanged`, called after errors such as a broken `Tso` stream). A
    /// round already running or backing off is not restarted.
    pub fn schedule_check(&mut self, now: Instant) {
        match self.phase {
            Phase::Idle => self.start_update_round(now),
            Phase::Failed => {}
            _ => self.check_requested = true,
        }
    }

    /// A PD call to `address` failed at the transport level. If it was the leader, it is
    /// marked unreachable (so forwarding, when enabled, picks a follower) and a member refresh
    /// is scheduled. Mirrors the PD Go client marking a service client unavailable and
    /// scheduling a member check.
    pub fn handle_rpc_failure(&mut self, now: Instant, address: &str) {
        if self.leader.as_deref() == Some(address) {
            self.leader_available = false;
        }
        self.schedule_check(now);
    }

    /// The leader at `address` could not be dialled. It is marked unreachable, so that
    /// [`PdDiscovery::endpoint`] routes through a follower when forwarding is enabled, but no
    /// member refresh is scheduled: the members were just read and named this leader, and a
    /// refresh would only repeat that answer. The next periodic refresh (or a failure reported
    /// with [`PdDiscovery::handle_rpc_failure`]) checks again. Mirrors the PD Go client's
    /// leader health check marking the leader's service client unavailable
    /// (`serviceDiscovery.checkServiceModeChanged` / `updateServiceClient` with forwarding).
    pub fn mark_leader_unreachable(&mut self, address: &str) {
        if self.leader.as_deref() == Some(address) {
            self.leader_available = false;
        }
    }

    /// Whether the leader is believed reachable.
    pub fn leader_available(&self) -> bool {
        self.leader_available
    }

    /// Whether the last member round found no answering endpoint and the machine waits out a
    /// `BoPDRPC` backoff before the next one.
    pub fn is_backing_off(&self) -> bool {
        matches!(self.phase, Phase::Backoff { .. })
    }

    /// Whether initialisation gave up ([`PdEvent::Failed`] was emitted).
    pub fn has_failed(&self) -> bool {
        matches!(self.phase, Phase::Failed)
    }

    /// A PD call to `address` succeeded: the leader is reachable again.
    pub fn handle_rpc_success(&mut self, address: &str) {
        if self.leader.as_deref() == Some(address) {
            self.leader_available = true;
        }
    }

    // ---- outputs ----------------------------------------------------------------------

    /// The next call to make.
    pub fn poll_action(&mut self) -> Option<PdAction> {
        self.actions.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<PdEvent> {
        self.events.pop_front()
    }

    /// When [`PdDiscovery::handle_timeout`] should be called next, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        match self.phase {
            Phase::Backoff { until } => Some((until, "pd discovery backoff")),
            Phase::Idle => self.next_update.map(|t| (t, "pd member refresh")),
            _ => None,
        }
    }

    // ---- internals --------------------------------------------------------------------

    fn ask(&mut self, address: Arc<str>, timeout: Duration) {
        let id = self.next_id;
        self.next_id += 1;
        self.outstanding = Some(id);
        self.actions.push_back(PdAction::GetMembers {
            id,
            address,
            request: pdpb::GetMembersRequest {
                header: Some(self.request_header()),
            },
            timeout,
        });
    }

    fn start_init_round(&mut self, _now: Instant) {
        self.init_rounds += 1;
        self.phase = Phase::InitClusterId {
            index: 0,
            found: None,
        };
        let first = self.seeds[0].clone();
        self.ask(first, self.cfg.init_timeout);
    }

    fn start_update_round(&mut self, _now: Instant) {
        self.check_requested = false;
        let urls = self.urls.clone();
        let first = urls[0].clone();
        self.phase = Phase::UpdateMember { urls, index: 0 };
        self.ask(first, self.cfg.update_timeout);
    }

    /// Mirrors the PD Go client `initClusterID`.
    fn on_init_answer(
        &mut self,
        now: Instant,
        index: usize,
        mut found: Option<u64>,
        result: Result<pdpb::GetMembersResponse, Error>,
    ) {
        match result {
            Ok(resp) => match (
                &resp.header,
                resp.header.as_ref().and_then(|h| h.error.as_ref()),
            ) {
                (Some(h), None) if h.cluster_id != 0 => match found {
                    None => found = Some(h.cluster_id),
                    Some(id) if id != h.cluster_id => {
                        let err = Error::Pd(format!(
                            "PD endpoints belong to different clusters: {id} and {} (at {})",
                            h.cluster_id, self.seeds[index]
                        ));
                        self.fail(err);
                        return;
                    }
                    Some(_) => {}
                },
                (_, Some(e)) => {
                    self.last_error = Some(Error::Pd(format!(
                        "GetMembers on {}: {}",
                        self.seeds[index], e.message
                    )));
                }
                _ => {
                    self.last_error = Some(Error::Pd(format!(
                        "GetMembers on {} answered without a cluster id",
                        self.seeds[index]
                    )));
                }
            },
            Err(e) => self.last_error = Some(e),
        }
        let next = index + 1;
        if next < self.seeds.len() {
            self.phase = Phase::InitClusterId { index: next, found };
            let address = self.seeds[next].clone();
            self.ask(address, self.cfg.init_timeout);
            return;
        }
        match found {
            Some(id) => {
                self.cluster_id = Some(id);
                self.start_update_round(now);
            }
            None => self.round_failed(now),
        }
    }

    /// Mirrors the PD Go client `updateMember`, `updateURLs`, `switchLeader` and
    /// `updateFollowers`.
    fn on_update_answer(
        &mut self,
        now: Instant,
        urls: Vec<Arc<str>>,
        index: usize,
        result: Result<pdpb::GetMembersResponse, Error>,
    ) {
        let address = urls[index].clone();
        let outcome = result.and_then(|resp| {
            self.check_header(resp.header.as_ref())
                .map_err(|e| Error::Pd(format!("GetMembers on {address}: {e}")))?;
            let leader = resp
                .leader
                .as_ref()
                .and_then(|l| {
                    pick_url(&l.client_urls, self.cfg.tls)
                        .map(|u| (l.member_id, Arc::<str>::from(u)))
                })
                .ok_or_else(|| Error::Pd(format!("GetMembers on {address}: no leader")))?;
            Ok((resp, leader))
        });
        let (resp, (leader_id, leader_url)) = match outcome {
            Ok(v) => v,
            Err(e) => {
                self.last_error = Some(e);
                let next = index + 1;
                if next < urls.len() {
                    let address = urls[next].clone();
                    self.phase = Phase::UpdateMember { urls, index: next };
                    self.ask(address, self.cfg.update_timeout);
                } else {
                    self.round_failed(now);
                }
                return;
            }
        };

        // Endpoints: every client URL of every member, sorted.
        let mut all: Vec<Arc<str>> = resp
            .members
            .iter()
            .flat_map(|m| m.client_urls.iter())
            .map(|u| strip_scheme(u))
            .filter(|u| !u.is_empty())
            .map(Arc::from)
            .collect();
        all.sort();
        all.dedup();
        if !all.is_empty() && all != self.urls {
            self.urls = all;
            if self.initialized {
                self.events.push_back(PdEvent::MembersChanged);
            }
        }
        let followers: Vec<Arc<str>> = resp
            .members
            .iter()
            .filter(|m| m.member_id != leader_id)
            .filter_map(|m| pick_url(&m.client_urls, self.cfg.tls))
            .map(Arc::from)
            .collect();
        self.followers = followers;

        let leader = leader_url;
        let changed = self.leader.as_deref() != Some(&*leader);
        self.leader = Some(leader.clone());
        self.leader_available = true;
        self.backoff = Backoffer::new(0);
        self.phase = Phase::Idle;
        self.next_update = Some(now + self.cfg.member_update_interval);
        if !self.initialized {
            self.initialized = true;
            self.events.push_back(PdEvent::Ready {
                cluster_id: self.cluster_id.unwrap_or(0),
                leader,
            });
        } else if changed {
            self.events.push_back(PdEvent::LeaderChanged { leader });
        }
        if self.check_requested {
            self.start_update_round(now);
        }
    }

    /// No endpoint answered in this round: back off with `BoPDRPC`, or give up during
    /// initialisation after `max_init_rounds` (PD Go client `initRetry`).
    fn round_failed(&mut self, now: Instant) {
        if !self.initialized && self.init_rounds >= self.cfg.max_init_rounds {
            let last = self
                .last_error
                .clone()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "no answer".to_owned());
            self.fail(Error::Pd(format!(
                "failed to discover the PD cluster after {} rounds: {last}",
                self.init_rounds
            )));
            return;
        }
        let err = self
            .last_error
            .clone()
            .unwrap_or_else(|| Error::Pd("no PD endpoint answered".to_owned()));
        let sleep = self
            .backoff
            .backoff(BackoffKind::PdRpc, err, None, &mut self.rng)
            .unwrap_or(Duration::from_millis(BackoffKind::PdRpc.params().1));
        self.phase = Phase::Backoff { until: now + sleep };
    }

    fn fail(&mut self, err: Error) {
        self.phase = Phase::Failed;
        self.outstanding = None;
        self.last_error = Some(err.clone());
        self.events.push_back(PdEvent::Failed(err));
    }
}

/// Checks a PD response header against the expected cluster id (if known). Mirrors the PD Go
/// client's header checks.
pub fn check_header(
    cluster_id: Option<u64>,
    header: Option<&pdpb::ResponseHeader>,
) -> Result<(), Error> {
    let Some(h) = header else {
        return Ok(());
    };
    if let Some(e) = &h.error {
        let kind = pdpb::ErrorType::try_from(e.r#type)
            .map(|t| t.as_str_name())
            .unwrap_or("UNKNOWN");
        return Err(Error::Pd(format!("{kind}: {}", e.message)));
    }
    if let Some(id) = cluster_id
        && h.cluster_id != 0
        && h.cluster_id != id
    {
        return Err(Error::Pd(format!(
            "cluster id does not match: {} != {id}",
            h.cluster_id
        )));
    }
    Ok(())
}

/// The URL to use among a member's client URLs: the first with the scheme matching the TLS
/// setting, else the first. Mirrors the PD Go client `tlsutil.PickMatchedURL`.
fn pick_url(urls: &[String], tls: bool) -> Option<&str> {
    let scheme = if tls { "https://" } else { "http://" };
    urls.iter()
        .find(|u| u.starts_with(scheme))
        .or_else(|| urls.first())
        .map(|u| strip_scheme(u))
        .filter(|u| !u.is_empty())
}

// ----- external timestamp and the TSO minimum ------------------------------------------------

/// The rule PD's `SetExternalTimestamp` found broken (PD `server/server.go` `SetExternalTS`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum ExternalTsRejection {
    /// The timestamp is above the global TSO PD allocated while handling the request: an
    /// external timestamp may not be in the future.
    #[error("it is larger than the global TSO")]
    AboveGlobalTs,
    /// The timestamp is not above the external timestamp already stored: it only moves
    /// forward (the same value again is refused too).
    #[error("it is not larger than the current external timestamp")]
    NotAboveCurrent,
    /// PD refused it with another `INVALID_VALUE` message (kept as sent).
    #[error("{0}")]
    Other(String),
}

impl ExternalTsRejection {
    /// Classifies the message of PD's `INVALID_VALUE` answer. PD `SetExternalTS` words its two
    /// refusals "the external timestamp should not be larger than global ts" and "the external
    /// timestamp should be larger than current external timestamp".
    pub fn from_message(message: &str) -> Self {
        if message.contains("global ts") {
            ExternalTsRejection::AboveGlobalTs
        } else if message.contains("current external timestamp") {
            ExternalTsRejection::NotAboveCurrent
        } else {
            ExternalTsRejection::Other(message.to_owned())
        }
    }
}

/// Reads PD's answer to `SetExternalTimestamp(ts)`: an `INVALID_VALUE` header is
/// [`Error::ExternalTimestampRejected`], any other header error [`Error::Pd`]. Mirrors the PD
/// Go client `SetExternalTimestamp` (a header error fails the call) behind client-go
/// `oracle/oracles/pd.go` `pdOracle.SetExternalTimestamp`.
pub fn set_external_ts_reply(
    cluster_id: u64,
    ts: u64,
    resp: &pdpb::SetExternalTimestampResponse,
) -> Result<(), Error> {
    if let Some(e) = resp.header.as_ref().and_then(|h| h.error.as_ref())
        && e.r#type == pdpb::ErrorType::InvalidValue as i32
    {
        return Err(Error::ExternalTimestampRejected {
            ts,
            reason: ExternalTsRejection::from_message(&e.message),
        });
    }
    check_header(known(cluster_id), resp.header.as_ref())
}

/// Reads PD's answer to `GetExternalTimestamp`: the stored external timestamp (0 when none was
/// ever set). Mirrors the PD Go client `GetExternalTimestamp`.
pub fn external_ts_reply(
    cluster_id: u64,
    resp: &pdpb::GetExternalTimestampResponse,
) -> Result<super::Timestamp, Error> {
    check_header(known(cluster_id), resp.header.as_ref())?;
    Ok(super::Timestamp(resp.timestamp))
}

/// Reads PD's answer to `GetMinTS`: the smallest timestamp of all TSO keyspace groups (for a
/// PD serving the TSO itself, a fresh timestamp). A header error or an answer without a
/// timestamp is [`Error::Pd`], as is a timestamp whose parts do not fit (negative, logical
/// part of 18 bits or more, physical part of more than 46 bits). Mirrors the PD Go client
/// `GetMinTS` (the logical part is used as sent: `AddLogical(logical, 0, suffix_bits)`).
pub fn min_ts_reply(
    cluster_id: u64,
    resp: &pdpb::GetMinTsResponse,
) -> Result<super::Timestamp, Error> {
    check_header(known(cluster_id), resp.header.as_ref())
        .map_err(|e| Error::Pd(format!("GetMinTS: {e}")))?;
    let ts = resp
        .timestamp
        .as_ref()
        .ok_or_else(|| Error::Pd("GetMinTS: no min ts info collected".to_owned()))?;
    let physical = u64::try_from(ts.physical).ok();
    let logical = u64::try_from(ts.logical).ok();
    match (physical, logical) {
        (Some(p), Some(l))
            if p <= super::Timestamp::MAX_PHYSICAL_MS
                && l < 1 << super::Timestamp::LOGICAL_BITS =>
        {
            Ok(super::Timestamp::compose(p, l))
        }
        _ => Err(Error::Pd(format!(
            "GetMinTS: timestamp out of range: physical {}, logical {}",
            ts.physical, ts.logical
        ))),
    }
}

/// `Some(id)` for a known cluster id (0 means not known yet).
fn known(cluster_id: u64) -> Option<u64> {
    (cluster_id != 0).then_some(cluster_id)
}

#[cfg(test)]
mod external_ts_tests {
    use super::*;
    use crate::machine::Timestamp;

    fn header(
        cluster_id: u64,
        error: Option<(pdpb::ErrorType, &str)>,
    ) -> Option<pdpb::ResponseHeader> {
        Some(pdpb::ResponseHeader {
            cluster_id,
            error: error.map(|(t, m)| pdpb::Error {
                r#type: t as i32,
                message: m.to_owned(),
            }),
        })
    }

    #[test]
    fn set_external_ts_refusals_are_typed_by_rule() {
        let ok = pdpb::SetExternalTimestampResponse {
            header: header(7, None),
        };
        assert_eq!(set_external_ts_reply(7, 10, &ok), Ok(()));
        let cases = [
            (
                "the external timestamp should not be larger than global ts",
                ExternalTsRejection::AboveGlobalTs,
            ),
            (
                "the external timestamp should be larger than current external timestamp",
                ExternalTsRejection::NotAboveCurrent,
            ),
            ("odd", ExternalTsRejection::Other("odd".into())),
        ];
        for (message, reason) in cases {
            let resp = pdpb::SetExternalTimestampResponse {
                header: header(7, Some((pdpb::ErrorType::InvalidValue, message))),
            };
            assert_eq!(
                set_external_ts_reply(7, 10, &resp),
                Err(Error::ExternalTimestampRejected { ts: 10, reason })
            );
        }
        let other = pdpb::SetExternalTimestampResponse {
            header: header(
                7,
                Some((pdpb::ErrorType::NotBootstrapped, "not bootstrapped")),
            ),
        };
        assert!(matches!(
            set_external_ts_reply(7, 10, &other),
            Err(Error::Pd(_))
        ));
        let wrong_cluster = pdpb::SetExternalTimestampResponse {
            header: header(8, None),
        };
        assert!(matches!(
            set_external_ts_reply(7, 10, &wrong_cluster),
            Err(Error::Pd(_))
        ));
        assert!(
            !Error::ExternalTimestampRejected {
                ts: 1,
                reason: ExternalTsRejection::AboveGlobalTs
            }
            .is_retryable()
        );
    }

    #[test]
    fn get_external_ts_reads_the_stored_value() {
        let resp = pdpb::GetExternalTimestampResponse {
            header: header(7, None),
            timestamp: 42,
        };
        assert_eq!(external_ts_reply(7, &resp), Ok(Timestamp(42)));
        assert_eq!(external_ts_reply(0, &resp), Ok(Timestamp(42)));
        let failed = pdpb::GetExternalTimestampResponse {
            header: header(7, Some((pdpb::ErrorType::Unknown, "boom"))),
            timestamp: 42,
        };
        assert!(matches!(external_ts_reply(7, &failed), Err(Error::Pd(_))));
    }

    #[test]
    fn min_ts_is_composed_and_checked() {
        let reply = |physical: i64, logical: i64| pdpb::GetMinTsResponse {
            header: header(7, None),
            timestamp: Some(pdpb::Timestamp {
                physical,
                logical,
                suffix_bits: 0,
            }),
        };
        assert_eq!(
            min_ts_reply(7, &reply(1_000, 5)),
            Ok(Timestamp::compose(1_000, 5))
        );
        let max = Timestamp::MAX_PHYSICAL_MS as i64;
        assert_eq!(
            min_ts_reply(7, &reply(max, (1 << 18) - 1)),
            Ok(Timestamp(u64::MAX))
        );
        for (p, l) in [(-1, 0), (0, -1), (0, 1 << 18), (max + 1, 0)] {
            assert!(
                matches!(min_ts_reply(7, &reply(p, l)), Err(Error::Pd(_))),
                "({p}, {l}) must be refused"
            );
        }
        let empty = pdpb::GetMinTsResponse {
            header: header(7, None),
            timestamp: None,
        };
        assert!(matches!(min_ts_reply(7, &empty), Err(Error::Pd(m)) if m.contains("no min ts")));
        let failed = pdpb::GetMinTsResponse {
            header: header(7, Some((pdpb::ErrorType::Unknown, "tso unavailable"))),
            timestamp: None,
        };
        assert!(
            matches!(min_ts_reply(7, &failed), Err(Error::Pd(m)) if m.contains("tso unavailable"))
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, url: &str) -> pdpb::Member {
        pdpb::Member {
            name: format!("pd{id}"),
            member_id: id,
            client_urls: vec![format!("http://{url}")],
            ..Default::default()
        }
    }

    fn members(cluster: u64, leader: u64) -> pdpb::GetMembersResponse {
        let all = vec![
            member(1, "pd1:2379"),
            member(2, "pd2:2379"),
            member(3, "pd3:2379"),
        ];
        pdpb::GetMembersResponse {
            header: Some(pdpb::ResponseHeader {
                cluster_id: cluster,
                error: None,
            }),
            leader: all.iter().find(|m| m.member_id == leader).cloned(),
            members: all,
            ..Default::default()
        }
    }

    fn next_call(d: &mut PdDiscovery) -> (u64, Arc<str>, Duration) {
        match d.poll_action() {
            Some(PdAction::GetMembers {
                id,
                address,
                timeout,
                ..
            }) => (id, address, timeout),
            other => panic!("expected GetMembers, got {other:?}"),
        }
    }

    fn refused() -> Error {
        Error::Pd("connection refused".into())
    }

    /// Discovery through two seeds, both answering for cluster 7 with leader pd2.
    fn ready() -> (Instant, PdDiscovery) {
        let t0 = crate::machine::testkit::origin();
        let mut d =
            PdDiscovery::new(t0, &["http://pd1:2379", "pd2:2379"], PdConfig::default(), 5).unwrap();
        let (id, addr, timeout) = next_call(&mut d);
        assert_eq!((&*addr, timeout), ("pd1:2379", Duration::from_secs(3)));
        d.handle_members(t0, id, Ok(members(7, 2)));
        let (id, addr, _) = next_call(&mut d);
        assert_eq!(&*addr, "pd2:2379");
        d.handle_members(t0, id, Ok(members(7, 2)));
        // Member update round on the (still configured) endpoints.
        let (id, addr, timeout) = next_call(&mut d);
        assert_eq!((&*addr, timeout), ("pd1:2379", Duration::from_secs(1)));
        d.handle_members(t0, id, Ok(members(7, 2)));
        assert_eq!(
            d.poll_event(),
            Some(PdEvent::Ready {
                cluster_id: 7,
                leader: "pd2:2379".into()
            })
        );
        (t0, d)
    }

    #[test]
    fn discovers_cluster_id_leader_and_followers() {
        let (_, mut d) = ready();
        assert!(d.is_ready());
        assert_eq!(d.cluster_id(), Some(7));
        assert_eq!(d.leader().map(|l| &**l), Some("pd2:2379"));
        let f: Vec<&str> = d.followers().iter().map(|f| &**f).collect();
        assert_eq!(f, vec!["pd1:2379", "pd3:2379"]);
        let e: Vec<&str> = d.endpoints().iter().map(|f| &**f).collect();
        assert_eq!(e, vec!["pd1:2379", "pd2:2379", "pd3:2379"]);
        assert_eq!(d.request_header().cluster_id, 7);
        assert_eq!(
            d.endpoint(),
            Some(PdEndpoint {
                address: "pd2:2379".into(),
                forward_to: None
            })
        );
        assert!(d.poll_action().is_none());
    }

    #[test]
    fn unreachable_endpoints_are_skipped() {
        let t0 = crate::machine::testkit::origin();
        let mut d =
            PdDiscovery::new(t0, &["pd1:2379", "pd2:2379"], PdConfig::default(), 5).unwrap();
        let (id, _, _) = next_call(&mut d);
        d.handle_members(t0, id, Err(refused()));
        let (id, addr, _) = next_call(&mut d);
        assert_eq!(&*addr, "pd2:2379");
        d.handle_members(t0, id, Ok(members(7, 1)));
        // Update round: pd1 still refuses, pd2 answers.
        let (id, addr, _) = next_call(&mut d);
        assert_eq!(&*addr, "pd1:2379");
        d.handle_members(t0, id, Err(refused()));
        let (id, addr, _) = next_call(&mut d);
        assert_eq!(&*addr, "pd2:2379");
        d.handle_members(t0, id, Ok(members(7, 1)));
        assert!(matches!(d.poll_event(), Some(PdEvent::Ready { .. })));
        assert_eq!(d.leader().map(|l| &**l), Some("pd1:2379"));
    }

    #[test]
    fn seeds_of_different_clusters_are_fatal() {
        let t0 = crate::machine::testkit::origin();
        let mut d = PdDiscovery::new(t0, &["a:1", "b:1"], PdConfig::default(), 5).unwrap();
        let (id, _, _) = next_call(&mut d);
        d.handle_members(t0, id, Ok(members(7, 1)));
        let (id, _, _) = next_call(&mut d);
        d.handle_members(t0, id, Ok(members(8, 1)));
        assert!(matches!(
            d.poll_event(),
            Some(PdEvent::Failed(Error::Pd(_)))
        ));
        assert!(d.poll_action().is_none());
        assert!(d.poll_timeout().is_none());
    }

    #[test]
    fn member_answer_of_another_cluster_or_without_leader_is_rejected() {
        let (t0, mut d) = ready();
        d.schedule_check(t0);
        // pd1: foreign cluster; pd2: no leader; pd3: good, leader moved to pd3.
        let (id, addr, _) = next_call(&mut d);
        assert_eq!(&*addr, "pd1:2379");
        d.handle_members(t0, id, Ok(members(9, 3)));
        let (id, addr, _) = next_call(&mut d);
        assert_eq!(&*addr, "pd2:2379");
        let mut no_leader = members(7, 3);
        no_leader.leader = None;
        d.handle_members(t0, id, Ok(no_leader));
        let (id, addr, _) = next_call(&mut d);
        assert_eq!(&*addr, "pd3:2379");
        d.handle_members(t0, id, Ok(members(7, 3)));
        assert_eq!(
            d.poll_event(),
            Some(PdEvent::LeaderChanged {
                leader: "pd3:2379".into()
            })
        );
        assert_eq!(d.leader().map(|l| &**l), Some("pd3:2379"));
    }

    #[test]
    fn failed_rounds_back_off_with_pd_rpc_and_init_gives_up() {
        let t0 = crate::machine::testkit::origin();
        let cfg = PdConfig {
            max_init_rounds: 2,
            ..PdConfig::default()
        };
        let mut d = PdDiscovery::new(t0, &["pd1:2379"], cfg, 5).unwrap();
        let (id, _, _) = next_call(&mut d);
        d.handle_members(t0, id, Err(refused()));
        let (until, why) = d.poll_timeout().unwrap();
        assert_eq!(why, "pd discovery backoff");
        let wait = until - t0;
        assert!(
            wait >= Duration::from_millis(250) && wait < Duration::from_millis(500),
            "{wait:?}"
        );
        d.handle_timeout(until - Duration::from_millis(1));
        assert!(d.poll_action().is_none(), "spurious timeout");
        d.handle_timeout(until);
        let (id, _, _) = next_call(&mut d);
        d.handle_members(until, id, Err(refused()));
        match d.poll_event() {
            Some(PdEvent::Failed(Error::Pd(msg))) => assert!(msg.contains("refused"), "{msg}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn periodic_refresh_and_leader_failure_trigger_member_updates() {
        let (t0, mut d) = ready();
        let (at, why) = d.poll_timeout().unwrap();
        assert_eq!(
            (at, why),
            (t0 + Duration::from_secs(60), "pd member refresh")
        );
        d.handle_timeout(at);
        let (id, _, _) = next_call(&mut d);
        d.handle_members(at, id, Ok(members(7, 2)));
        assert!(d.poll_event().is_none(), "nothing changed");

        // The leader fails: a refresh starts at once.
        d.handle_rpc_failure(at, "pd2:2379");
        let (id, addr, _) = next_call(&mut d);
        assert_eq!(&*addr, "pd1:2379");
        // While that round runs, another request for a check is remembered, not doubled.
        d.schedule_check(at);
        assert!(d.poll_action().is_none());
        d.handle_members(at, id, Ok(members(7, 1)));
        assert_eq!(
            d.poll_event(),
            Some(PdEvent::LeaderChanged {
                leader: "pd1:2379".into()
            })
        );
        // The remembered check runs right after.
        let (id, _, _) = next_call(&mut d);
        d.handle_members(at, id, Ok(members(7, 1)));
        // Stale answers are ignored.
        d.handle_members(at, id, Ok(members(7, 3)));
        assert_eq!(d.leader().map(|l| &**l), Some("pd1:2379"));
    }

    #[test]
    fn forwarding_uses_followers_while_the_leader_is_unreachable() {
        let t0 = crate::machine::testkit::origin();
        let cfg = PdConfig {
            enable_forwarding: true,
            ..PdConfig::default()
        };
        let mut d = PdDiscovery::new(t0, &["pd1:2379"], cfg, 5).unwrap();
        let (id, _, _) = next_call(&mut d);
        d.handle_members(t0, id, Ok(members(7, 2)));
        let (id, _, _) = next_call(&mut d);
        d.handle_members(t0, id, Ok(members(7, 2)));
        assert!(matches!(d.poll_event(), Some(PdEvent::Ready { .. })));
        d.handle_rpc_failure(t0, "pd2:2379");
        let e1 = d.endpoint().unwrap();
        let e2 = d.endpoint().unwrap();
        assert_eq!(e1.forward_to.as_deref(), Some("pd2:2379"));
        assert_ne!(e1.address, e2.address, "round robin over followers");
        assert!(["pd1:2379", "pd3:2379"].contains(&&*e1.address));
        d.handle_rpc_success("pd2:2379");
        assert_eq!(d.endpoint().unwrap().forward_to, None);
    }

    #[test]
    fn an_undialable_leader_switches_to_forwarding_without_a_refresh_storm() {
        let t0 = crate::machine::testkit::origin();
        let cfg = PdConfig {
            enable_forwarding: true,
            ..PdConfig::default()
        };
        let mut d = PdDiscovery::new(t0, &["pd1:2379"], cfg, 5).unwrap();
        let (id, _, _) = next_call(&mut d);
        d.handle_members(t0, id, Ok(members(7, 2)));
        let (id, _, _) = next_call(&mut d);
        d.handle_members(t0, id, Ok(members(7, 2)));
        assert!(matches!(d.poll_event(), Some(PdEvent::Ready { .. })));
        assert!(d.leader_available());
        // A follower's address changes nothing.
        d.mark_leader_unreachable("pd1:2379");
        assert!(d.leader_available());
        d.mark_leader_unreachable("pd2:2379");
        assert!(!d.leader_available());
        assert!(d.poll_action().is_none(), "no member refresh scheduled");
        let e = d.endpoint().unwrap();
        assert_eq!(e.forward_to.as_deref(), Some("pd2:2379"));
        // The periodic refresh names the same leader and makes it available for a new try.
        let (at, _) = d.poll_timeout().unwrap();
        d.handle_timeout(at);
        let (id, _, _) = next_call(&mut d);
        d.handle_members(at, id, Ok(members(7, 2)));
        assert!(d.leader_available());
        assert!(!d.is_backing_off() && !d.has_failed());
    }

    #[test]
    fn a_failed_refresh_round_backs_off() {
        let (t0, mut d) = ready();
        d.schedule_check(t0);
        for _ in 0..3 {
            let (id, _, _) = next_call(&mut d);
            d.handle_members(t0, id, Err(refused()));
        }
        assert!(d.is_backing_off());
        assert!(matches!(d.last_error(), Some(Error::Pd(m)) if m.contains("refused")));
        // The leader stays known while PD is unreachable.
        assert_eq!(d.leader().map(|l| &**l), Some("pd2:2379"));
    }

    #[test]
    fn header_checks() {
        let ok = pdpb::ResponseHeader {
            cluster_id: 7,
            error: None,
        };
        assert!(check_header(Some(7), Some(&ok)).is_ok());
        assert!(check_header(None, Some(&ok)).is_ok());
        assert!(check_header(Some(7), None).is_ok());
        assert!(matches!(
            check_header(Some(8), Some(&ok)),
            Err(Error::Pd(_))
        ));
        let err = pdpb::ResponseHeader {
            cluster_id: 7,
            error: Some(pdpb::Error {
                r#type: pdpb::ErrorType::RegionNotFound as i32,
                message: "region not found".into(),
            }),
        };
        match check_header(Some(7), Some(&err)) {
            Err(Error::Pd(m)) => assert!(m.starts_with("REGION_NOT_FOUND"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn endpoints_are_normalised_and_required() {
        assert_eq!(strip_scheme("https://h:1/"), "h:1");
        assert_eq!(strip_scheme("h:1"), "h:1");
        let empty: [&str; 0] = [];
        assert!(matches!(
            PdDiscovery::new(
                crate::machine::testkit::origin(),
                &empty,
                PdConfig::default(),
                1
            ),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(
            pick_url(&["http://a:1".into(), "https://b:2".into()], true),
            Some("b:2")
        );
        assert_eq!(pick_url(&["https://b:2".into()], false), Some("b:2"));
    }
}
