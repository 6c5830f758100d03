//! Reading and writing frames on async byte streams (QUIC streams in practice).
//!
//! `read_frame` is not cancel-safe: drivers read each stream from one task and hand the
//! messages over a channel, rather than racing a read in `select!`.

use serde::{Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::frame::{FrameError, decode_frame, encode_frame, frame_len};

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("stream ended in the middle of a frame")]
    Truncated,
    #[error("stream I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one message. `Ok(None)` when the stream ended cleanly between frames.
pub async fn read_frame<T, R>(reader: &mut R, max: usize) -> Result<Option<T>, StreamError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let mut header = [0u8; 4];
    let mut filled = 0;
    while filled < header.len() {
        match reader.read(&mut header[filled..]).await? {
            0 if filled == 0 => return Ok(None),
            0 => return Err(StreamError::Truncated),
            n => filled += n,
        }
    }
    // Checked before allocating: the peer chooses this number.
    let len = frame_len(header, max)?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => StreamError::Truncated,
        _ => StreamError::Io(e),
    })?;
    Ok(Some(decode_frame(&body)?))
}

pub async fn write_frame<T, W>(writer: &mut W, message: &T, max: usize) -> Result<(), StreamError>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    let frame = encode_frame(message, max)?;
    writer.write_all(&frame).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::AgentMessage;

    #[tokio::test]
    async fn frames_cross_a_pipe_and_an_oversize_header_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(64);
        write_frame(&mut a, &AgentMessage::Heartbeat { seq: 9 }, 1024).await.expect("write");
        let got: Option<AgentMessage> = read_frame(&mut b, 1024).await.expect("read");
        assert_eq!(got, Some(AgentMessage::Heartbeat { seq: 9 }));
        a.write_all(&u32::MAX.to_be_bytes()).await.expect("write");
        let err = read_frame::<AgentMessage, _>(&mut b, 1024).await.expect_err("too large");
        assert!(matches!(err, StreamError::Frame(FrameError::TooLarge { .. })));
        drop(a);
        assert!(read_frame::<AgentMessage, _>(&mut b, 1024).await.expect("clean end").is_none());
    }
}
