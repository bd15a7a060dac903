//! XEP-0065 mode's handshake (docs/PROTOCOL.md section 6): the SOCKS5 greeting
//! and the one CONNECT request by stream hash, decoded by `wire`. Each reply
//! goes out in one write: XMPP clients read each segment as one message.

use std::io;

use bytes::BytesMut;
use dtcp_wire::socks5::{self, Method, ReplyCode, StreamHash};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::reply::Socks5Refusal;

/// How a SOCKS5 handshake ended without a request.
#[derive(Debug)]
pub(crate) enum Failed {
    /// The client closed in the middle.
    Gone,
    /// Answer this and close.
    Refused(Socks5Refusal),
    /// The socket failed.
    Io(io::Error),
}

/// Reads the greeting (answering `05 00`) and the request; what the client
/// sent behind the request stays in `buf`, to be delivered after activation.
pub(crate) async fn read_request(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<StreamHash, Failed> {
    let method = loop {
        match socks5::decode_greeting(buf) {
            Ok(Some(method)) => break method,
            Ok(None) => read_more(stream, buf).await?,
            // The first byte, 05, chose this protocol: not reached.
            Err(_) => return Err(Failed::Gone),
        }
    };
    if method == Method::NoneAcceptable {
        return Err(Failed::Refused(Socks5Refusal::NoAcceptableMethod));
    }
    stream
        .write_all(&Method::NoAuth.reply())
        .await
        .map_err(Failed::Io)?;
    loop {
        match socks5::decode_request(buf) {
            Ok(Some(hash)) => return Ok(hash),
            Ok(None) => read_more(stream, buf).await?,
            Err(e) => {
                let code = e.reply_code().unwrap_or(ReplyCode::GeneralFailure);
                return Err(Failed::Refused(Socks5Refusal::Reply(code)));
            }
        }
    }
}

/// Reads what the client sends next into `buf` (a greeting and a request
/// fit in the handshake buffer: 257 and 47 bytes at most).
async fn read_more(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<(), Failed> {
    match stream.read_buf(buf).await {
        Ok(0) => Err(Failed::Gone),
        Ok(_) => Ok(()),
        Err(e) => Err(Failed::Io(e)),
    }
}
