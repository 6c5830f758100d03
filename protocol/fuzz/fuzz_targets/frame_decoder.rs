//! Arbitrary bytes into the frame decoder, as every message type: must never panic, and must
//! never buffer more than one frame limit beyond what it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use windflow_protocol::FrameDecoder;
use windflow_protocol::messages::{AgentMessage, ControlMessage, JobEvent, JobRequest};

fuzz_target!(|data: &[u8]| {
    let mut decoder = FrameDecoder::new(64 * 1024);
    for chunk in data.chunks(7) {
        if decoder.push(chunk).is_err() {
            return;
        }
        loop {
            let step = match chunk.first().copied().unwrap_or(0) % 4 {
                0 => decoder.next_message::<AgentMessage>().map(|m| m.is_some()),
                1 => decoder.next_message::<ControlMessage>().map(|m| m.is_some()),
                2 => decoder.next_message::<JobRequest>().map(|m| m.is_some()),
                _ => decoder.next_message::<JobEvent>().map(|m| m.is_some()),
            };
            match step {
                Ok(true) => continue,
                Ok(false) => break,
                Err(_) => return,
            }
        }
        assert!(decoder.buffered() <= data.len());
    }
});
