//! WindFlow's wire protocol, with no I/O of its own.
//!
//! This crate owns everything that crosses the link between the control plane and an agent:
//! the message enums ([`messages`]), the length-prefixed postcard framing ([`frame`]), the
//! Ed25519-signed job envelopes ([`job`]), reconnect backoff ([`backoff`]) and the session state
//! machines of both ends ([`session`]).
//!
//! The optional `io` module (feature `io`) is the one adapter to async streams; everything
//! else must never touch a socket, a clock or a file: time is passed in as `now`, randomness as
//! arguments, and bytes in and out as slices. postcard is used nowhere else in the workspace.

pub mod backoff;
pub mod frame;
#[cfg(feature = "io")]
pub mod io;
pub mod job;
pub mod messages;
pub mod session;
pub mod stack;

pub use frame::{FrameDecoder, FrameError, MAX_FRAME_LEN, decode_frame, encode_frame};
pub use job::{JobEnvelope, JobPayload, JobRejection, Platform, SignedJob, VmAction, Workload};
pub use messages::*;
pub use stack::StackSpec;
