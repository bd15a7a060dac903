//! The `dtcp` tool's framing for sending one file through a paired stream.
//!
//! The relay never looks at these bytes; this is a convention between the
//! two ends only:
//!
//! ```text
//! sender -> receiver:  size (8 bytes, big-endian; u64::MAX = unknown, read to EOF)
//!                      the file's bytes, then end of stream (FIN, or TLS close_notify)
//! receiver -> sender:  0x06 (ACK) once every byte is written out
//! ```
//!
//! The ACK lets the sender report success only when the receiver has the
//! whole file, not merely when the bytes left the sender's socket.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The size field of a stream whose length is not known in advance (stdin).
pub const UNKNOWN_SIZE: u64 = u64::MAX;
/// The receiver's confirmation.
pub const ACK: u8 = 0x06;
/// Copy chunk size.
const CHUNK: usize = 256 * 1024;

/// A transfer that did not complete.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The stream ended before the announced size.
    #[error("the transfer ended after {got} of {expected} bytes")]
    Short {
        /// Announced size.
        expected: u64,
        /// Bytes received.
        got: u64,
    },
    /// The source held more or fewer bytes than announced (a file that changed
    /// while being sent).
    #[error("the file changed while being sent: announced {announced} bytes, read {read}")]
    SourceChanged {
        /// Size at the start.
        announced: u64,
        /// Bytes actually read.
        read: u64,
    },
    /// The receiver closed without confirming.
    #[error("the receiver closed without confirming receipt")]
    NoAck,
}

/// Sends `size` bytes (or, with `None`, everything up to EOF) from `src`,
/// then waits for the receiver's ACK. Calls `progress` with each chunk's size.
pub async fn send<S, R>(
    stream: &mut S,
    src: &mut R,
    size: Option<u64>,
    mut progress: impl FnMut(u64),
) -> Result<u64, TransferError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    stream
        .write_all(&size.unwrap_or(UNKNOWN_SIZE).to_be_bytes())
        .await?;
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    loop {
        let n = src.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        sent += n as u64;
        if size.is_some_and(|s| sent > s) {
            break;
        }
        stream.write_all(&buf[..n]).await?;
        progress(n as u64);
    }
    if let Some(announced) = size.filter(|s| *s != sent) {
        return Err(TransferError::SourceChanged {
            announced,
            read: sent,
        });
    }
    // End of stream: FIN through the relay (or close_notify inside TLS).
    stream.shutdown().await?;
    let mut ack = [0u8; 1];
    match stream.read(&mut ack).await {
        Ok(1) if ack[0] == ACK => Ok(sent),
        _ => Err(TransferError::NoAck),
    }
}

/// Receives one file into `dst`, then confirms with an ACK. Calls `on_size`
/// once with the announced size and `progress` with each chunk's size.
pub async fn receive<S, W>(
    stream: &mut S,
    dst: &mut W,
    on_size: impl FnOnce(Option<u64>),
    progress: impl FnMut(u64),
) -> Result<u64, TransferError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    W: AsyncWrite + Unpin,
{
    let got = receive_unconfirmed(stream, dst, on_size, progress).await?;
    confirm(stream).await?;
    Ok(got)
}

/// [`receive`] without the ACK: for a receiver that has more to do before
/// the sender may report success (move the file into place, unpack it),
/// then calls [`confirm`]. Without it the sender reports
/// [`TransferError::NoAck`].
pub async fn receive_unconfirmed<S, W>(
    stream: &mut S,
    dst: &mut W,
    on_size: impl FnOnce(Option<u64>),
    mut progress: impl FnMut(u64),
) -> Result<u64, TransferError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut header = [0u8; 8];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|_| TransferError::Short {
            expected: 8,
            got: 0,
        })?;
    let size = match u64::from_be_bytes(header) {
        UNKNOWN_SIZE => None,
        n => Some(n),
    };
    on_size(size);
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    loop {
        let want = match size {
            Some(s) if got == s => break,
            Some(s) => (s - got).min(CHUNK as u64) as usize,
            None => CHUNK,
        };
        let n = stream.read(&mut buf[..want]).await?;
        if n == 0 {
            if let Some(expected) = size {
                return Err(TransferError::Short { expected, got });
            }
            break;
        }
        dst.write_all(&buf[..n]).await?;
        got += n as u64;
        progress(n as u64);
    }
    dst.flush().await?;
    Ok(got)
}

/// Tells the sender everything arrived: the ACK, then end of stream.
pub async fn confirm<S: AsyncWrite + Unpin>(stream: &mut S) -> Result<(), TransferError> {
    stream.write_all(&[ACK]).await?;
    stream.shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn known_and_unknown_sizes_round_trip() {
        for known in [true, false] {
            let data: Vec<u8> = (0..1_000_003u32).map(|i| (i * 7) as u8).collect();
            let (mut a, mut b) = tokio::io::duplex(64 * 1024);
            let size = known.then_some(data.len() as u64);
            let mut src = &data[..];
            let mut out = Vec::new();
            let mut announced = None;
            let (sent, got) = tokio::join!(
                send(&mut a, &mut src, size, |_| {}),
                receive(&mut b, &mut out, |s| announced = Some(s), |_| {})
            );
            assert_eq!(sent.unwrap(), data.len() as u64);
            assert_eq!(got.unwrap(), data.len() as u64);
            assert_eq!(announced, Some(size));
            assert!(out == data);
        }
    }

    #[tokio::test]
    async fn a_short_stream_is_an_error() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&10u64.to_be_bytes()).await.unwrap();
        a.write_all(b"12345").await.unwrap();
        drop(a);
        let err = receive(&mut b, &mut Vec::new(), |_| {}, |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                TransferError::Short {
                    expected: 10,
                    got: 5
                }
            ),
            "{err}"
        );
    }
}
