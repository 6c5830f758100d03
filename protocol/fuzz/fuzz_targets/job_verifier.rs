//! Arbitrary envelopes and signatures into the job verifier: must refuse, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use windflow_protocol::SignedJob;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (signature, envelope) = data.split_at(split);
    let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]).verifying_key();
    let job = SignedJob { envelope: envelope.to_vec(), signature: signature.to_vec() };
    assert!(job.verify(&key, uuid::Uuid::nil(), 0).is_err());
    let _ = job.unverified_job_id();
});
