//! Length-prefixed frames: `u32_be(len) || len bytes`, with a hard maximum.
//!
//! A peer can never make this side allocate more than the maximum: the length is checked
//! before any buffer is made, and an oversized frame ends the stream with an error.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream ended cleanly before a frame began.
    #[error("the stream ended")]
    Closed,
    /// The stream failed or ended in the middle of a frame.
    #[error("stream error: {0}")]
    Io(#[from] io::Error),
    /// A frame larger than allowed.
    #[error("frame of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// Announced or actual length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The frame's bytes are not what was expected.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Reads one frame of at most `max` bytes.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    let mut filled = 0;
    while filled < len.len() {
        match reader.read(&mut len[filled..]).await? {
            0 if filled == 0 => return Err(FrameError::Closed),
            0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            n => filled += n,
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    Ok(body)
}

/// Writes one frame and flushes it, so it leaves now rather than with the next one.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    body: &[u8],
    max: usize,
) -> Result<(), FrameError> {
    if body.len() > max {
        return Err(FrameError::TooLarge { len: body.len(), max });
    }
    let len =
        u32::try_from(body.len()).map_err(|_| FrameError::TooLarge { len: body.len(), max })?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(body);
    writer.write_all(&buf).await?;
    writer.flush().await?;
    Ok(())
}

/// Appends `value` as one CBOR frame to `buf`, for writing later with others.
pub fn append_value<T: Serialize>(
    buf: &mut Vec<u8>,
    value: &T,
    max: usize,
) -> Result<(), FrameError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    ciborium::into_writer(value, &mut *buf).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = buf.len() - start - 4;
    if len > max {
        buf.truncate(start);
        return Err(FrameError::TooLarge { len, max });
    }
    let prefix = u32::try_from(len).map_err(|_| FrameError::TooLarge { len, max })?.to_be_bytes();
    buf[start..start + 4].copy_from_slice(&prefix);
    Ok(())
}

/// Encodes `value` as CBOR.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).map_err(|e| FrameError::Malformed(e.to_string()))?;
    Ok(out)
}

/// Decodes CBOR bytes as `T`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FrameError> {
    ciborium::from_reader(bytes).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Writes `value` as one CBOR frame.
pub async fn write_value<W: AsyncWrite + Unpin, T: Serialize>(
    writer: &mut W,
    value: &T,
    max: usize,
) -> Result<(), FrameError> {
    write_frame(writer, &encode(value)?, max).await
}

/// Reads one CBOR frame as `T`.
pub async fn read_value<R: AsyncRead + Unpin, T: DeserializeOwned>(
    reader: &mut R,
    max: usize,
) -> Result<T, FrameError> {
    decode(&read_frame(reader, max).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    fn block<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn frames_round_trip() {
        let mut buf = Cursor::new(Vec::new());
        block(write_frame(&mut buf, b"hello", 16)).expect("write");
        block(write_frame(&mut buf, b"", 16)).expect("write empty");
        buf.set_position(0);
        assert_eq!(block(read_frame(&mut buf, 16)).expect("read"), b"hello");
        assert_eq!(block(read_frame(&mut buf, 16)).expect("read"), b"");
        assert!(matches!(block(read_frame(&mut buf, 16)), Err(FrameError::Closed)));
    }

    #[test]
    fn an_oversized_length_is_refused_before_allocating() {
        let mut bytes = u32::MAX.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"xx");
        let mut buf = Cursor::new(bytes);
        assert!(matches!(
            block(read_frame(&mut buf, 1024)),
            Err(FrameError::TooLarge { len, max: 1024 }) if len == u32::MAX as usize
        ));
        let mut out = Cursor::new(Vec::new());
        assert!(matches!(
            block(write_frame(&mut out, &[0; 20], 10)),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_truncated_frame_is_an_error_not_a_short_frame() {
        let mut bytes = 10u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        assert!(matches!(block(read_frame(&mut Cursor::new(bytes), 64)), Err(FrameError::Io(_))));
        assert!(matches!(
            block(read_frame(&mut Cursor::new(vec![0, 0]), 64)),
            Err(FrameError::Io(_))
        ));
    }

    #[test]
    fn appended_frames_read_back_and_oversized_ones_leave_the_buffer_alone() {
        let mut buf = Vec::new();
        append_value(&mut buf, &"one", 64).expect("fits");
        append_value(&mut buf, &vec![7u8; 10], 64).expect("fits");
        let before = buf.len();
        assert!(matches!(
            append_value(&mut buf, &"x".repeat(100), 64),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(buf.len(), before);
        let mut cursor = Cursor::new(buf);
        assert_eq!(block(read_value::<_, String>(&mut cursor, 64)).expect("first"), "one");
        assert_eq!(
            block(read_value::<_, Vec<u8>>(&mut cursor, 64)).expect("second"),
            vec![7u8; 10]
        );
    }

    #[test]
    fn garbage_cbor_is_malformed() {
        assert!(matches!(decode::<Vec<String>>(&[0xff, 0x00]), Err(FrameError::Malformed(_))));
    }
}
