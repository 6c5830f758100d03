//! Both ends driven against each other in simulated time.

use super::*;
use crate::messages::{HostFacts, PROTOCOL_VERSION};

const AGENT: Uuid = Uuid::from_u128(0xa1);
const INTERVAL: Duration = Duration::from_secs(5);

fn hello(agent_id: Uuid, version: u16) -> Hello {
    Hello {
        protocol_version: version,
        agent_version: "test".into(),
        agent_id,
        facts: HostFacts {
            hostname: "h".into(),
            os: "Debian".into(),
            arch: "x86_64".into(),
            kernel: "6.1".into(),
            cpus: 2,
            memory_bytes: 1 << 30,
            docker: None,
        },
    }
}

/// Two sessions and a perfect link with a fixed one-way latency.
struct Link {
    agent: AgentSession,
    control: ControlSession,
    now: Instant,
    agent_events: Vec<AgentSessionEvent>,
    control_events: Vec<ControlSessionEvent>,
    /// When false, messages in both directions are dropped.
    up: bool,
}

impl Link {
    fn new(claimed: Uuid, version: u16) -> Self {
        let now = Instant::now();
        Self {
            agent: AgentSession::new(hello(claimed, version), now, Duration::from_secs(10)),
            control: ControlSession::new(AGENT, now, INTERVAL, Duration::from_secs(10)),
            now,
            agent_events: vec![],
            control_events: vec![],
            up: true,
        }
    }

    /// Moves messages until both outboxes are empty.
    fn exchange(&mut self) {
        loop {
            let mut moved = false;
            while let Some(m) = self.agent.poll_transmit() {
                moved = true;
                if self.up {
                    self.control_events.extend(self.control.handle(m, self.now, 0));
                }
            }
            while let Some(m) = self.control.poll_transmit() {
                moved = true;
                if self.up {
                    self.agent_events.extend(self.agent.handle(m, self.now));
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Advances simulated time to `until`, stepping through every timer on the way.
    fn run_until(&mut self, until: Instant) {
        self.exchange();
        loop {
            let next = [self.agent.poll_timeout(), self.control.poll_timeout()].into_iter().flatten().min();
            match next {
                Some(at) if at <= until => {
                    self.now = at.max(self.now);
                    self.agent_events.extend(self.agent.handle_timeout(self.now));
                    self.control_events.extend(self.control.handle_timeout(self.now));
                    self.exchange();
                }
                _ => break,
            }
        }
        self.now = until;
    }
}

#[test]
fn hello_is_answered_with_welcome_and_the_session_is_established() {
    let mut link = Link::new(AGENT, PROTOCOL_VERSION);
    link.exchange();
    assert!(link.agent.is_established());
    assert!(matches!(link.control_events[..], [ControlSessionEvent::Registered(_)]));
    assert!(matches!(&link.agent_events[..], [AgentSessionEvent::Established(w)] if w.heartbeat_interval_ms == 5000));
}

#[test]
fn heartbeats_keep_a_session_alive_for_an_hour() {
    let mut link = Link::new(AGENT, PROTOCOL_VERSION);
    let start = link.now;
    link.run_until(start + Duration::from_secs(3600));
    assert!(link.agent.is_established());
    assert_eq!(link.control_events.len(), 1, "{:?}", link.control_events);
    // One heartbeat per interval.
    assert_eq!(link.agent.heartbeat_seq, 3600 / 5);
}

#[test]
fn a_cut_link_closes_both_ends_after_three_missed_heartbeats() {
    let mut link = Link::new(AGENT, PROTOCOL_VERSION);
    link.exchange();
    let cut_at = link.now;
    link.up = false;
    link.run_until(cut_at + INTERVAL * MISSED_HEARTBEATS_LIMIT - Duration::from_millis(1));
    assert!(link.agent.is_established());
    link.run_until(cut_at + INTERVAL * MISSED_HEARTBEATS_LIMIT + Duration::from_millis(1));
    assert_eq!(link.control_events.last(), Some(&ControlSessionEvent::Closed(CloseReason::PeerSilent)));
    assert_eq!(link.agent_events.last(), Some(&AgentSessionEvent::Closed(CloseReason::PeerSilent)));
}

#[test]
fn an_agent_that_never_says_hello_is_dropped() {
    let now = Instant::now();
    let mut control = ControlSession::new(AGENT, now, INTERVAL, Duration::from_secs(10));
    assert_eq!(control.handle_timeout(now + Duration::from_secs(9)), None);
    assert_eq!(
        control.handle_timeout(now + Duration::from_secs(10)),
        Some(ControlSessionEvent::Closed(CloseReason::HelloTimeout))
    );
}

#[test]
fn an_unsupported_version_is_refused_with_a_typed_reason() {
    let mut link = Link::new(AGENT, PROTOCOL_VERSION + 1);
    link.exchange();
    let refusal = Refusal::UnsupportedVersion { supported: PROTOCOL_VERSION, offered: PROTOCOL_VERSION + 1 };
    assert_eq!(link.agent_events, vec![AgentSessionEvent::Closed(CloseReason::Refused(refusal))]);
}

#[test]
fn an_agent_claiming_another_identity_is_refused() {
    let other = Uuid::from_u128(0xb2);
    let mut link = Link::new(other, PROTOCOL_VERSION);
    link.exchange();
    assert_eq!(
        link.control_events,
        vec![ControlSessionEvent::Closed(CloseReason::Refused(Refusal::IdentityMismatch {
            certificate: AGENT,
            claimed: other
        }))]
    );
}

#[test]
fn a_message_before_hello_is_a_protocol_violation() {
    let now = Instant::now();
    let mut control = ControlSession::new(AGENT, now, INTERVAL, Duration::from_secs(10));
    let event = control.handle(AgentMessage::Heartbeat { seq: 1 }, now, 0);
    assert!(matches!(event, Some(ControlSessionEvent::Closed(CloseReason::Refused(Refusal::ProtocolViolation(_))))));
    assert!(matches!(control.poll_transmit(), Some(ControlMessage::Refused(_))));
}

#[test]
fn a_ping_is_answered_and_its_round_trip_measured() {
    let mut link = Link::new(AGENT, PROTOCOL_VERSION);
    link.exchange();
    let nonce = link.control.ping(link.now);
    // Deliver the ping, let 30 ms pass, then deliver the pong.
    let ping = link.control.poll_transmit().expect("ping queued");
    link.agent.handle(ping, link.now);
    link.now += Duration::from_millis(30);
    let pong = link.agent.poll_transmit().expect("pong queued");
    let event = link.control.handle(pong, link.now, 0);
    assert_eq!(event, Some(ControlSessionEvent::PingAnswered { nonce, round_trip: Duration::from_millis(30) }));
}

#[test]
fn a_renewal_request_reaches_the_control_plane_and_the_answer_the_agent() {
    let mut link = Link::new(AGENT, PROTOCOL_VERSION);
    link.exchange();
    link.agent.send(AgentMessage::RenewCertificate { csr_der: vec![1, 2, 3] });
    link.exchange();
    assert_eq!(link.control_events.last(), Some(&ControlSessionEvent::RenewalRequested { csr_der: vec![1, 2, 3] }));
    link.control.send(ControlMessage::CertificateRenewed { cert_der: vec![4] });
    link.exchange();
    assert_eq!(link.agent_events.last(), Some(&AgentSessionEvent::CertificateRenewed { cert_der: vec![4] }));
}
