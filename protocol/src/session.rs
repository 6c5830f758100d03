//! The control-stream session of each end, as deterministic state machines.
//!
//! Drivers feed received messages in with `handle`, let time pass with `handle_timeout`, send
//! whatever `poll_transmit` yields and sleep until `poll_timeout`. No clock is read here: `now`
//! always comes from the caller, which lets tests run hours of heartbeats in microseconds.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::messages::{AgentMessage, ControlMessage, Hello, PROTOCOL_VERSION, Refusal, StatusReport, Welcome};

/// How many heartbeat intervals of silence end a session.
pub const MISSED_HEARTBEATS_LIMIT: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer said nothing for too long.
    PeerSilent,
    /// The agent did not say Hello in time.
    HelloTimeout,
    Refused(Refusal),
}

// ---------------------------------------------------------------------------------------------
// Agent side
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum AgentState {
    AwaitingWelcome,
    Established { heartbeat_interval: Duration },
    Closed(CloseReason),
}

/// What the agent driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentSessionEvent {
    Established(Welcome),
    CertificateRenewed { cert_der: Vec<u8> },
    RenewalRefused { reason: String },
    Closed(CloseReason),
}

#[derive(Debug)]
pub struct AgentSession {
    state: AgentState,
    outbox: VecDeque<AgentMessage>,
    next_heartbeat: Option<Instant>,
    last_heard: Instant,
    heartbeat_seq: u64,
    /// Before the Welcome arrives, how long to wait for it.
    welcome_timeout: Duration,
}

impl AgentSession {
    pub fn new(hello: Hello, now: Instant, welcome_timeout: Duration) -> Self {
        Self {
            state: AgentState::AwaitingWelcome,
            outbox: VecDeque::from([AgentMessage::Hello(hello)]),
            next_heartbeat: None,
            last_heard: now,
            heartbeat_seq: 0,
            welcome_timeout,
        }
    }

    pub fn is_established(&self) -> bool {
        matches!(self.state, AgentState::Established { .. })
    }

    pub fn handle(&mut self, message: ControlMessage, now: Instant) -> Option<AgentSessionEvent> {
        if matches!(self.state, AgentState::Closed(_)) {
            return None;
        }
        self.last_heard = now;
        match message {
            ControlMessage::Welcome(welcome) => {
                let interval = Duration::from_millis(u64::from(welcome.heartbeat_interval_ms.max(100)));
                self.state = AgentState::Established { heartbeat_interval: interval };
                self.next_heartbeat = Some(now + interval);
                Some(AgentSessionEvent::Established(welcome))
            }
            ControlMessage::Refused(refusal) => Some(self.close(CloseReason::Refused(refusal))),
            ControlMessage::HeartbeatAck { .. } => None,
            ControlMessage::Ping { nonce } => {
                self.outbox.push_back(AgentMessage::Pong { nonce });
                None
            }
            ControlMessage::CertificateRenewed { cert_der } => Some(AgentSessionEvent::CertificateRenewed { cert_der }),
            ControlMessage::RenewalRefused { reason } => Some(AgentSessionEvent::RenewalRefused { reason }),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Option<AgentSessionEvent> {
        match self.state {
            AgentState::AwaitingWelcome if now >= self.last_heard + self.welcome_timeout => {
                Some(self.close(CloseReason::PeerSilent))
            }
            AgentState::Established { heartbeat_interval } => {
                if now >= self.last_heard + heartbeat_interval * MISSED_HEARTBEATS_LIMIT {
                    return Some(self.close(CloseReason::PeerSilent));
                }
                if self.next_heartbeat.is_some_and(|at| now >= at) {
                    self.heartbeat_seq += 1;
                    self.outbox.push_back(AgentMessage::Heartbeat { seq: self.heartbeat_seq });
                    self.next_heartbeat = Some(now + heartbeat_interval);
                }
                None
            }
            _ => None,
        }
    }

    /// Queues a message for the control plane (status report, event, renewal request).
    pub fn send(&mut self, message: AgentMessage) {
        if self.is_established() {
            self.outbox.push_back(message);
        }
    }

    pub fn report_status(&mut self, report: StatusReport) {
        self.send(AgentMessage::StatusReport(report));
    }

    pub fn poll_transmit(&mut self) -> Option<AgentMessage> {
        self.outbox.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            AgentState::AwaitingWelcome => Some(self.last_heard + self.welcome_timeout),
            AgentState::Established { heartbeat_interval } => {
                let silent = self.last_heard + heartbeat_interval * MISSED_HEARTBEATS_LIMIT;
                Some(self.next_heartbeat.map_or(silent, |at| at.min(silent)))
            }
            AgentState::Closed(_) => None,
        }
    }

    fn close(&mut self, reason: CloseReason) -> AgentSessionEvent {
        self.state = AgentState::Closed(reason.clone());
        self.next_heartbeat = None;
        AgentSessionEvent::Closed(reason)
    }
}

// ---------------------------------------------------------------------------------------------
// Control-plane side
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum ControlState {
    AwaitingHello { deadline: Instant },
    Established,
    Closed(CloseReason),
}

/// What the control-plane driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlSessionEvent {
    Registered(Hello),
    Status(StatusReport),
    Event(crate::messages::AgentEvent),
    PingAnswered { nonce: u64, round_trip: Duration },
    RenewalRequested { csr_der: Vec<u8> },
    StackStatus(crate::messages::StackStatus),
    Capabilities(Vec<crate::messages::Capability>),
    Closed(CloseReason),
}

#[derive(Debug)]
pub struct ControlSession {
    /// The identity proven by the client certificate.
    agent_id: Uuid,
    state: ControlState,
    heartbeat_interval: Duration,
    last_heard: Instant,
    outbox: VecDeque<ControlMessage>,
    pings: HashMap<u64, Instant>,
    next_nonce: u64,
}

impl ControlSession {
    pub fn new(agent_id: Uuid, now: Instant, heartbeat_interval: Duration, hello_timeout: Duration) -> Self {
        Self {
            agent_id,
            state: ControlState::AwaitingHello { deadline: now + hello_timeout },
            heartbeat_interval,
            last_heard: now,
            outbox: VecDeque::new(),
            pings: HashMap::new(),
            next_nonce: 1,
        }
    }

    pub fn agent_id(&self) -> Uuid {
        self.agent_id
    }

    /// `now_unix_ms` is only copied into the Welcome so the agent can see clock skew.
    pub fn handle(&mut self, message: AgentMessage, now: Instant, now_unix_ms: u64) -> Option<ControlSessionEvent> {
        match (&self.state, message) {
            (ControlState::Closed(_), _) => None,
            (ControlState::AwaitingHello { .. }, AgentMessage::Hello(hello)) => {
                self.last_heard = now;
                if hello.protocol_version != PROTOCOL_VERSION {
                    return Some(self.refuse(Refusal::UnsupportedVersion {
                        supported: PROTOCOL_VERSION,
                        offered: hello.protocol_version,
                    }));
                }
                if hello.agent_id != self.agent_id {
                    return Some(
                        self.refuse(Refusal::IdentityMismatch { certificate: self.agent_id, claimed: hello.agent_id }),
                    );
                }
                self.state = ControlState::Established;
                self.outbox.push_back(ControlMessage::Welcome(Welcome {
                    protocol_version: PROTOCOL_VERSION,
                    heartbeat_interval_ms: u32::try_from(self.heartbeat_interval.as_millis()).unwrap_or(u32::MAX),
                    server_time_unix_ms: now_unix_ms,
                }));
                Some(ControlSessionEvent::Registered(hello))
            }
            (ControlState::AwaitingHello { .. }, _) => {
                Some(self.refuse(Refusal::ProtocolViolation("the first message must be Hello".into())))
            }
            (ControlState::Established, message) => {
                self.last_heard = now;
                match message {
                    AgentMessage::Hello(_) => Some(self.refuse(Refusal::ProtocolViolation("Hello sent twice".into()))),
                    AgentMessage::Heartbeat { seq } => {
                        self.outbox.push_back(ControlMessage::HeartbeatAck { seq });
                        None
                    }
                    AgentMessage::StatusReport(report) => Some(ControlSessionEvent::Status(report)),
                    AgentMessage::Event(event) => Some(ControlSessionEvent::Event(event)),
                    AgentMessage::Pong { nonce } => self.pings.remove(&nonce).map(|sent| {
                        ControlSessionEvent::PingAnswered { nonce, round_trip: now.saturating_duration_since(sent) }
                    }),
                    AgentMessage::RenewCertificate { csr_der } => {
                        Some(ControlSessionEvent::RenewalRequested { csr_der })
                    }
                    AgentMessage::StackStatus(status) => Some(ControlSessionEvent::StackStatus(status)),
                    AgentMessage::Capabilities(capabilities) => Some(ControlSessionEvent::Capabilities(capabilities)),
                }
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Option<ControlSessionEvent> {
        match self.state {
            ControlState::AwaitingHello { deadline } if now >= deadline => Some(self.close(CloseReason::HelloTimeout)),
            ControlState::Established if now >= self.last_heard + self.heartbeat_interval * MISSED_HEARTBEATS_LIMIT => {
                Some(self.close(CloseReason::PeerSilent))
            }
            _ => None,
        }
    }

    /// Sends a ping; the answer comes back as [`ControlSessionEvent::PingAnswered`].
    pub fn ping(&mut self, now: Instant) -> u64 {
        let nonce = self.next_nonce;
        self.next_nonce += 1;
        self.pings.insert(nonce, now);
        self.outbox.push_back(ControlMessage::Ping { nonce });
        nonce
    }

    /// Queues a message for the agent (renewal answers).
    pub fn send(&mut self, message: ControlMessage) {
        if matches!(self.state, ControlState::Established) {
            self.outbox.push_back(message);
        }
    }

    pub fn poll_transmit(&mut self) -> Option<ControlMessage> {
        self.outbox.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            ControlState::AwaitingHello { deadline } => Some(deadline),
            ControlState::Established => Some(self.last_heard + self.heartbeat_interval * MISSED_HEARTBEATS_LIMIT),
            ControlState::Closed(_) => None,
        }
    }

    fn refuse(&mut self, refusal: Refusal) -> ControlSessionEvent {
        self.outbox.push_back(ControlMessage::Refused(refusal.clone()));
        self.close(CloseReason::Refused(refusal))
    }

    fn close(&mut self, reason: CloseReason) -> ControlSessionEvent {
        self.state = ControlState::Closed(reason.clone());
        self.pings.clear();
        ControlSessionEvent::Closed(reason)
    }
}

#[cfg(test)]
mod tests;
