//! Length-prefixed postcard frames: a u32 big-endian length, then that many postcard bytes.
//!
//! The decoder checks a length against its limit before it waits for (or allocates) the body,
//! so a peer cannot make us reserve memory by announcing a large frame.

use serde::{Serialize, de::DeserializeOwned};

/// Default largest frame body, in bytes.
pub const MAX_FRAME_LEN: usize = 1024 * 1024;

const HEADER_LEN: usize = 4;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {len} bytes is over the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame body is not a valid message: {0}")]
    Malformed(String),
    #[error("frame body has {0} trailing bytes after the message")]
    TrailingBytes(usize),
    #[error("message could not be encoded: {0}")]
    Encode(String),
}

/// Encodes one message as a frame.
pub fn encode_frame<T: Serialize>(message: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; HEADER_LEN];
    let mut out =
        postcard::to_extend(message, std::mem::take(&mut out)).map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = out.len() - HEADER_LEN;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    // The length fits in u32 because `max` is far below u32::MAX in every use.
    let header = u32::try_from(len).map_err(|_| FrameError::TooLarge { len, max })?.to_be_bytes();
    out[..HEADER_LEN].copy_from_slice(&header);
    Ok(out)
}

/// Reads the length announced by a frame header and checks it against `max`.
pub fn frame_len(header: [u8; HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Decodes a frame body (without its header). The whole body must be one message.
pub fn decode_frame<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (message, rest) = postcard::take_from_bytes(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes(rest.len()));
    }
    Ok(message)
}

/// Incremental decoder: push bytes as they arrive, pull whole messages out.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max: usize,
}

impl FrameDecoder {
    pub fn new(max: usize) -> Self {
        Self { buf: Vec::new(), max }
    }

    /// Appends received bytes. Fails at once if a header announces an oversize frame, so the
    /// caller can close the stream before reading more.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        self.buf.extend_from_slice(bytes);
        if let Some(header) = self.buf.first_chunk::<HEADER_LEN>() {
            frame_len(*header, self.max)?;
        }
        Ok(())
    }

    /// Returns the next complete message, `None` if more bytes are needed.
    pub fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        let Some(header) = self.buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let len = frame_len(*header, self.max)?;
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let message = decode_frame(&self.buf[HEADER_LEN..HEADER_LEN + len]);
        self.buf.drain(..HEADER_LEN + len);
        message.map(Some)
    }

    /// Bytes received but not yet part of a returned message.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::AgentMessage;

    #[test]
    fn a_frame_split_anywhere_decodes_to_the_same_message() {
        let message = AgentMessage::Heartbeat { seq: 300 };
        let frame = encode_frame(&message, MAX_FRAME_LEN).expect("encodes");
        for split in 0..=frame.len() {
            let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
            decoder.push(&frame[..split]).expect("push");
            let early: Option<AgentMessage> = decoder.next_message().expect("no error");
            if split < frame.len() {
                assert_eq!(early, None);
                decoder.push(&frame[split..]).expect("push");
            }
            let got = if split < frame.len() { decoder.next_message().expect("ok") } else { early };
            assert_eq!(got, Some(message.clone()));
            assert_eq!(decoder.buffered(), 0);
        }
    }

    #[test]
    fn an_oversize_header_is_refused_before_the_body_arrives() {
        let mut decoder = FrameDecoder::new(16);
        let err = decoder.push(&17u32.to_be_bytes()).expect_err("too large");
        assert_eq!(err, FrameError::TooLarge { len: 17, max: 16 });
    }

    #[test]
    fn garbage_is_a_typed_error() {
        let err = decode_frame::<AgentMessage>(&[0xff, 0xff, 0xff]).expect_err("garbage");
        assert!(matches!(err, FrameError::Malformed(_)), "{err:?}");
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut body = postcard::to_allocvec(&AgentMessage::Heartbeat { seq: 1 }).expect("enc");
        body.push(0);
        assert_eq!(decode_frame::<AgentMessage>(&body), Err(FrameError::TrailingBytes(1)));
    }

    #[test]
    fn encoding_over_the_limit_fails() {
        let message = AgentMessage::RenewCertificate { csr_der: vec![0; 100] };
        assert!(matches!(encode_frame(&message, 50), Err(FrameError::TooLarge { .. })));
    }
}
