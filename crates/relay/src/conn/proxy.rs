//! The preamble of a client connection: a PROXY protocol header, version 1
//! (text) or 2 (binary), from a trusted load balancer (docs/PROTOCOL.md section
//! 4). It names the client; every limit and log line then sees that address.
//!
//! The header is parsed by `ppp` over the handshake buffer itself, as bytes
//! arrive, and what follows it (the command) stays in the buffer.

use std::net::{IpAddr, SocketAddr};

use bytes::{Buf, BytesMut};
use dtcp_wire::Condition;
use ppp::PartialResult;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::pairing::request::DtcpRefusal;

/// The `verb` label of a refused preamble (no command has been read).
const VERB: &str = "unknown";
/// The signature a version 2 header begins with.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The prefix of a version 1 header.
const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// The fixed part of a version 2 header: signature, version and command,
/// family and protocol, then the length of the rest (big-endian).
const V2_FIXED_LEN: usize = 16;
/// The longest version 2 header accepted, fixed part included: the
/// specification's receive buffer (536 bytes), room for the addresses of
/// every family and the TLVs a balancer adds in practice.
pub(crate) const V2_MAX_LEN: usize = 536;
/// The longest version 1 header, `\r\n` included (the specification's limit).
pub(crate) const V1_MAX_LEN: usize = 107;

/// Which PROXY header the bytes so far can still become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    V1,
    V2,
    /// Neither: not a PROXY header.
    None,
    /// Too few bytes to tell.
    Unknown,
}

fn kind(buf: &[u8]) -> Kind {
    let matches = |sig: &[u8]| {
        let n = buf.len().min(sig.len());
        buf[..n] == sig[..n]
    };
    if buf.is_empty() {
        Kind::Unknown
    } else if matches(V1_PREFIX) {
        if buf.len() >= V1_PREFIX.len() {
            Kind::V1
        } else {
            Kind::Unknown
        }
    } else if matches(V2_SIGNATURE) {
        if buf.len() >= V2_SIGNATURE.len() {
            Kind::V2
        } else {
            Kind::Unknown
        }
    } else {
        Kind::None
    }
}

/// Whether the bytes received from an untrusted source are, or begin, a
/// PROXY header: such a claim is refused `forbidden`. A DTCP command never
/// begins like one.
pub(crate) fn looks_like_header(buf: &[u8]) -> bool {
    matches!(kind(buf), Kind::V1 | Kind::V2 | Kind::Unknown) && !buf.is_empty()
}

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// The header is complete and this long; the client is this address
    /// (`None`: a `LOCAL` or `UNKNOWN` header, the balancer's own connection).
    Complete {
        len: usize,
        client: Option<SocketAddr>,
    },
    /// More bytes are needed.
    Incomplete,
}

/// Parses the header at the start of `buf`, or says why it cannot be one.
pub(crate) fn parse(buf: &[u8]) -> Result<Parsed, &'static str> {
    match kind(buf) {
        Kind::Unknown => Ok(Parsed::Incomplete),
        Kind::None => Err("a PROXY protocol header is required from this address"),
        Kind::V1 => {
            // The line ends at the first CRLF; until it has come, the header
            // is incomplete (within its length limit).
            let window = &buf[..buf.len().min(V1_MAX_LEN)];
            let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
                return if buf.len() >= V1_MAX_LEN {
                    Err("PROXY protocol header too long")
                } else {
                    Ok(Parsed::Incomplete)
                };
            };
            let header = ppp::v1::Header::try_from(&buf[..end + 2])
                .map_err(|_| "malformed PROXY protocol header")?;
            let client = match header.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                ppp::v1::Addresses::Unknown => None,
            };
            Ok(Parsed::Complete {
                len: header.header.len(),
                client,
            })
        }
        Kind::V2 => {
            // Judge the announced length before waiting for that many bytes.
            if buf.len() >= V2_FIXED_LEN {
                let rest = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
                if V2_FIXED_LEN + rest > V2_MAX_LEN {
                    return Err("PROXY protocol header too long");
                }
            }
            let header = ppp::v2::Header::try_from(buf);
            if header.is_incomplete() {
                return Ok(Parsed::Incomplete);
            }
            let header = header.map_err(|_| "malformed PROXY protocol header")?;
            let client = match (header.command, header.addresses) {
                (ppp::v2::Command::Local, _) => None,
                (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                // A PROXY command must name an internet client here.
                (ppp::v2::Command::Proxy, _) => {
                    return Err("PROXY protocol header without a client address");
                }
            };
            Ok(Parsed::Complete {
                len: header.len(),
                client,
            })
        }
    }
}

/// Why the preamble ended without a client address.
#[derive(Debug)]
pub(crate) enum PreambleError {
    /// Refused, with this answer.
    Refused(DtcpRefusal),
    /// The client left (`Ok(0)`) or its socket failed: nobody to answer.
    Gone,
}

/// Reads the preamble of a connection from `peer` into `buf`, and returns
/// the client's address. From a trusted source a header is required; from
/// any other, a header is refused `forbidden` and the client is `peer`.
/// Returns with at least one byte in `buf` past the header, or `Gone`.
pub(crate) async fn read(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    peer: SocketAddr,
    trusted: bool,
    enabled: bool,
) -> Result<SocketAddr, PreambleError> {
    if !trusted {
        read_some(stream, buf).await?;
        if enabled {
            // A header needs its first bytes to be recognised; wait for as
            // many as tell a PROXY header from a command.
            while kind(buf) == Kind::Unknown {
                read_some(stream, buf).await?;
            }
            if looks_like_header(buf) {
                let text = "a PROXY protocol header is not accepted from this address";
                return Err(PreambleError::Refused(DtcpRefusal::new(
                    VERB,
                    Condition::Forbidden,
                    text,
                )));
            }
        }
        return Ok(peer);
    }
    loop {
        if buf.is_empty() || matches!(parse(buf), Ok(Parsed::Incomplete)) {
            if buf.len() >= V2_MAX_LEN {
                return Err(bad_request("PROXY protocol header too long"));
            }
            match read_some(stream, buf).await {
                Ok(()) => continue,
                Err(PreambleError::Gone) if !buf.is_empty() => {
                    return Err(bad_request("connection closed in a PROXY protocol header"));
                }
                Err(e) => return Err(e),
            }
        }
        match parse(buf) {
            Ok(Parsed::Complete { len, client }) => {
                buf.advance(len);
                return Ok(client.unwrap_or(peer));
            }
            Ok(Parsed::Incomplete) => unreachable!("handled above"),
            Err(text) => return Err(bad_request(text)),
        }
    }
}

fn bad_request(text: &'static str) -> PreambleError {
    PreambleError::Refused(DtcpRefusal::new(VERB, Condition::BadRequest, text))
}

/// One read into `buf`; a closed or failed socket is `Gone`.
async fn read_some(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<(), PreambleError> {
    if buf.capacity() == buf.len() {
        buf.reserve(V2_MAX_LEN);
    }
    match stream.read_buf(buf).await {
        Ok(0) | Err(_) => Err(PreambleError::Gone),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, rest: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&u16::try_from(rest.len()).unwrap().to_be_bytes());
        h.extend_from_slice(rest);
        h
    }

    #[test]
    fn v1_headers_name_the_client() {
        let h = b"PROXY TCP4 192.0.2.7 198.51.100.1 5555 7777\r\nCREATE";
        let len = h.len() - "CREATE".len();
        assert_eq!(
            parse(h),
            Ok(Parsed::Complete {
                len,
                client: Some("192.0.2.7:5555".parse().unwrap())
            })
        );
        let h6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n";
        assert!(matches!(parse(h6), Ok(Parsed::Complete { client: Some(a), .. }) if a.is_ipv6()));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Ok(Parsed::Complete {
                len: 15,
                client: None
            })
        );
    }

    #[test]
    fn every_prefix_of_a_header_is_incomplete() {
        let v1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 5555 7777\r\n";
        let mut addr = vec![192, 0, 2, 7, 198, 51, 100, 1];
        addr.extend_from_slice(&5555u16.to_be_bytes());
        addr.extend_from_slice(&7777u16.to_be_bytes());
        let v2 = v2(1, 0x11, &addr);
        for h in [&v1[..], &v2[..]] {
            for n in 0..h.len() {
                assert_eq!(parse(&h[..n]), Ok(Parsed::Incomplete), "{n} bytes of {h:?}");
            }
            assert!(matches!(parse(h), Ok(Parsed::Complete { len, .. }) if len == h.len()));
        }
    }

    #[test]
    fn v2_local_is_the_balancers_own_and_bad_ones_are_refused() {
        assert_eq!(
            parse(&v2(0, 0x00, &[])),
            Ok(Parsed::Complete {
                len: 16,
                client: None
            })
        );
        // A length beyond the buffer is refused before it is waited for.
        let mut long = v2(1, 0x11, &[]);
        long[14..16].copy_from_slice(&600u16.to_be_bytes());
        assert_eq!(parse(&long), Err("PROXY protocol header too long"));
        // Version 3 does not exist.
        let mut bad = v2(1, 0x11, &[0; 12]);
        bad[12] = 0x31;
        assert!(parse(&bad).is_err());
        assert!(parse(b"CREATE k a@b c@d\r\n").is_err(), "no header");
        assert!(parse(b"PROXY TCP4 nonsense\r\n").is_err());
        let over = format!("PROXY TCP4 {}", "1".repeat(120));
        assert_eq!(
            parse(over.as_bytes()),
            Err("PROXY protocol header too long")
        );
    }

    #[test]
    fn commands_do_not_look_like_headers() {
        assert!(!looks_like_header(b"CREATE"));
        assert!(!looks_like_header(b"CONNECT"));
        assert!(looks_like_header(b"PROXY TCP4"));
        assert!(looks_like_header(b"\r\n\r\n"));
    }
}
