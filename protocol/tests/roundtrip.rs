//! Property tests: every message survives encode → frame → decode, however the bytes are split,
//! and arbitrary bytes never panic the decoder.

use proptest::prelude::*;
use uuid::Uuid;
use windflow_protocol::messages::*;
use windflow_protocol::{FrameDecoder, MAX_FRAME_LEN, SignedJob, encode_frame};

fn facts() -> impl Strategy<Value = HostFacts> {
    (".{0,20}", ".{0,20}", any::<u32>(), any::<u64>(), proptest::option::of((".{0,8}", ".{0,8}"))).prop_map(
        |(hostname, os, cpus, memory_bytes, docker)| HostFacts {
            hostname,
            os,
            arch: "x86_64".into(),
            kernel: "6.1".into(),
            cpus,
            memory_bytes,
            docker: docker.map(|(version, node_id)| DockerFacts {
                version,
                api_version: "1.41".into(),
                swarm: SwarmState::Worker { node_id },
            }),
        },
    )
}

fn agent_message() -> impl Strategy<Value = AgentMessage> {
    prop_oneof![
        (any::<u16>(), any::<u128>(), facts()).prop_map(|(v, id, facts)| AgentMessage::Hello(Hello {
            protocol_version: v,
            agent_version: "x".into(),
            agent_id: Uuid::from_u128(id),
            facts,
        })),
        any::<u64>().prop_map(|seq| AgentMessage::Heartbeat { seq }),
        (facts(), any::<u32>(), any::<u64>()).prop_map(|(facts, running_jobs, uptime_s)| {
            AgentMessage::StatusReport(StatusReport { facts, running_jobs, uptime_s })
        }),
        any::<u64>().prop_map(|nonce| AgentMessage::Pong { nonce }),
        proptest::collection::vec(any::<u8>(), 0..512).prop_map(|csr_der| AgentMessage::RenewCertificate { csr_der }),
    ]
}

fn job_event() -> impl Strategy<Value = JobEvent> {
    prop_oneof![
        any::<u128>().prop_map(|id| JobEvent::Accepted { job_id: Uuid::from_u128(id) }),
        (".{0,30}", proptest::option::of(0u8..=100)).prop_map(|(step, percent)| JobEvent::Progress {
            job_id: Uuid::nil(),
            step,
            percent
        }),
        (".{0,10}", proptest::collection::vec(any::<u8>(), 0..1024), any::<u64>()).prop_map(|(source, data, ts)| {
            JobEvent::Log(LogChunk { source, stream: LogStream::Stdout, timestamp_unix_ms: ts, data })
        }),
        ".{0,30}"
            .prop_map(|message| JobEvent::Completed { job_id: Uuid::nil(), outcome: JobOutcome::Failed { message } }),
    ]
}

proptest! {
    #[test]
    fn agent_messages_round_trip_through_a_stream_of_frames(
        messages in proptest::collection::vec(agent_message(), 1..8),
        chunk in 1usize..64,
    ) {
        let mut stream = Vec::new();
        for m in &messages {
            stream.extend(encode_frame(m, MAX_FRAME_LEN).expect("encodes"));
        }
        let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
        let mut decoded = Vec::new();
        for piece in stream.chunks(chunk) {
            decoder.push(piece).expect("valid stream");
            while let Some(m) = decoder.next_message::<AgentMessage>().expect("valid frame") {
                decoded.push(m);
            }
        }
        prop_assert_eq!(decoded, messages);
    }

    #[test]
    fn job_events_round_trip(event in job_event()) {
        let frame = encode_frame(&event, MAX_FRAME_LEN).expect("encodes");
        let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
        decoder.push(&frame).expect("push");
        prop_assert_eq!(decoder.next_message::<JobEvent>().expect("ok"), Some(event));
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut decoder = FrameDecoder::new(1024);
        if decoder.push(&bytes).is_ok() {
            while let Ok(Some(_)) = decoder.next_message::<ControlMessage>() {}
        }
    }

    #[test]
    fn arbitrary_signed_jobs_are_refused_not_panicked_on(
        envelope in proptest::collection::vec(any::<u8>(), 0..256),
        signature in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]).verifying_key();
        let job = SignedJob { envelope, signature };
        prop_assert!(job.verify(&key, Uuid::nil(), 0).is_err());
    }
}
