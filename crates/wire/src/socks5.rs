//! The SOCKS5 side of XEP-0065 mode (docs/PROTOCOL.md, section 6).
//!
//! A connection whose first byte is `0x05` speaks the small subset of SOCKS5
//! (RFC 1928) that XEP-0065 uses: a greeting offering "no authentication",
//! then one CONNECT request whose destination is a domain name made of the
//! 40 lowercase hex characters of the stream's [`StreamHash`], port 0.
//!
//! Like the DTCP codec, both decoders look at the bytes read so far and answer
//! "need more" (`Ok(None)`), a value (its bytes removed from the buffer, what
//! follows left there), or a [`Socks5Error`] that names the reply to send
//! before closing. They refuse bad input at the earliest byte that proves it
//! bad, and never panic.
//!
//! ```
//! use bytes::BytesMut;
//! use dtcp_wire::socks5::{self, Method, StreamHash};
//!
//! let hash = StreamHash::of("sid1", "romeo@montague.lit/orchard", "juliet@capulet.lit/balcony");
//! let mut buf = BytesMut::from(&[0x05, 0x01, 0x00][..]);
//! assert_eq!(socks5::decode_greeting(&mut buf)?, Some(Method::NoAuth));
//! assert_eq!(Method::NoAuth.reply(), [0x05, 0x00]);
//!
//! buf.extend_from_slice(&socks5::encode_request(&hash));
//! buf.extend_from_slice(b"early bytes");
//! assert_eq!(socks5::decode_request(&mut buf)?, Some(hash));
//! assert_eq!(&buf[..], b"early bytes"); // kept for after activation
//! assert_eq!(&socks5::success_reply(&hash)[5..45], hash.to_string().as_bytes());
//! # Ok::<(), dtcp_wire::socks5::Socks5Error>(())
//! ```

use std::fmt;
use std::str::FromStr;

use bytes::BytesMut;
use sha1::{Digest, Sha1};

/// The protocol version, the first byte of every SOCKS5 message.
pub const VERSION: u8 = 0x05;

/// The only authentication method XEP-0065 uses: none.
pub const METHOD_NO_AUTH: u8 = 0x00;

/// The method selection that refuses every offered method.
pub const METHOD_NONE_ACCEPTABLE: u8 = 0xFF;

/// `CMD` of a CONNECT request; BIND (2) and UDP ASSOCIATE (3) are refused.
pub const CMD_CONNECT: u8 = 0x01;

/// `ATYP` of a domain name; IPv4 (1) and IPv6 (4) are refused.
pub const ATYP_DOMAIN: u8 = 0x03;

/// `ATYP` of an IPv4 address, used in error replies (which carry no address).
const ATYP_IPV4: u8 = 0x01;

/// Length of the hex [`StreamHash`] that is the request's domain name.
pub const HASH_HEX_LEN: usize = 40;

/// Length of the whole request: `05 01 00 03 28`, 40 hex characters, port `00 00`.
pub const REQUEST_LEN: usize = 5 + HASH_HEX_LEN + 2;

/// Length of an error reply: `05 REP 00 01 0.0.0.0 :0`.
pub const ERROR_REPLY_LEN: usize = 10;

/// The request bytes before the hash: version, CONNECT, reserved, domain, length.
const REQUEST_HEAD: [u8; 5] = [VERSION, CMD_CONNECT, 0x00, ATYP_DOMAIN, HASH_HEX_LEN as u8];

/// The address of a XEP-0065 bytestream: SHA-1 of `SID + requester JID +
/// target JID`, written on the wire as 40 lowercase hex characters.
///
/// Both SOCKS5 connections of one bytestream (the Target's and the
/// requester's) present it, and the activation IQ names it through the same
/// three strings.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamHash([u8; 20]);

impl StreamHash {
    /// The hash of a bytestream. The JIDs must already be normalised (the
    /// component does it); this function only concatenates and hashes.
    pub fn of(sid: &str, requester: &str, target: &str) -> Self {
        let mut h = Sha1::new();
        h.update(sid.as_bytes());
        h.update(requester.as_bytes());
        h.update(target.as_bytes());
        StreamHash(h.finalize().into())
    }

    /// The raw 20 bytes.
    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    /// Wraps 20 raw bytes.
    pub fn from_bytes(bytes: [u8; 20]) -> Self {
        StreamHash(bytes)
    }

    /// The 40 lowercase hex characters, as bytes.
    pub fn to_hex(&self) -> [u8; HASH_HEX_LEN] {
        let mut out = [0u8; HASH_HEX_LEN];
        hex::encode_to_slice(self.0, &mut out).expect("40 bytes hold 20 in hex");
        out
    }
}

impl fmt::Display for StreamHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.to_hex()).expect("hex is ASCII"))
    }
}

impl fmt::Debug for StreamHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamHash({self})")
    }
}

/// A string that is not 40 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a bytestream hash is 40 lowercase hex characters")]
pub struct ParseHashError;

impl FromStr for StreamHash {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex(s.as_bytes()).ok_or(ParseHashError)
    }
}

/// The 20 bytes of 40 lowercase hex characters; `None` for anything else
/// (XEP-0065 writes the hash in lowercase, and the pairing compares bytes).
fn parse_hex(hex_chars: &[u8]) -> Option<StreamHash> {
    if hex_chars.len() != HASH_HEX_LEN || !hex_chars.iter().all(|&b| is_lower_hex(b)) {
        return None;
    }
    let mut out = [0u8; 20];
    hex::decode_to_slice(hex_chars, &mut out).ok()?;
    Some(StreamHash(out))
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

/// The `REP` field of a reply (RFC 1928, section 6): the codes this relay sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplyCode {
    /// `00`: the request is accepted (sent with the hash, see [`success_reply`]).
    Succeeded,
    /// `01`: a malformed request (wrong version, reserved byte, hash length,
    /// hash characters or port).
    GeneralFailure,
    /// `02`: not allowed by the ruleset: a third connection with the same hash.
    NotAllowed,
    /// `07`: a command other than CONNECT (BIND, UDP ASSOCIATE, anything else).
    CommandNotSupported,
    /// `08`: an address type other than a domain name (IPv4, IPv6, anything else).
    AddressTypeNotSupported,
}

impl ReplyCode {
    /// The byte on the wire.
    pub const fn as_u8(self) -> u8 {
        match self {
            ReplyCode::Succeeded => 0x00,
            ReplyCode::GeneralFailure => 0x01,
            ReplyCode::NotAllowed => 0x02,
            ReplyCode::CommandNotSupported => 0x07,
            ReplyCode::AddressTypeNotSupported => 0x08,
        }
    }

    /// A short lowercase name, for metric labels and logs.
    pub const fn label(self) -> &'static str {
        match self {
            ReplyCode::Succeeded => "succeeded",
            ReplyCode::GeneralFailure => "general-failure",
            ReplyCode::NotAllowed => "not-allowed",
            ReplyCode::CommandNotSupported => "command-not-supported",
            ReplyCode::AddressTypeNotSupported => "address-type-not-supported",
        }
    }
}

/// Which field of a request is malformed, named in [`Socks5Error::Malformed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestField {
    /// The first byte is not `05`.
    Version,
    /// The reserved byte is not `00`.
    Reserved,
    /// The domain name's length is not 40.
    HashLength,
    /// A character of the hash is not lowercase hex.
    Hash,
    /// The port is not 0.
    Port,
}

impl fmt::Display for RequestField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RequestField::Version => "version",
            RequestField::Reserved => "reserved byte",
            RequestField::HashLength => "hash length",
            RequestField::Hash => "hash",
            RequestField::Port => "port",
        })
    }
}

/// Bytes that are not (and can no longer become) a XEP-0065 greeting or request.
///
/// [`Socks5Error::reply`] gives the bytes to send before the close, if any.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Socks5Error {
    /// The greeting's first byte is not `05`. SOCKS5 has no reply for this:
    /// the connection is closed silently.
    #[error("greeting is not SOCKS version 5 (got {0:#04x})")]
    GreetingVersion(u8),
    /// The request's command is not CONNECT.
    #[error("command {0:#04x} is not CONNECT")]
    CommandNotSupported(u8),
    /// The request's address type is not a domain name.
    #[error("address type {0:#04x} is not a domain name")]
    AddressTypeNotSupported(u8),
    /// The request is malformed in this field.
    #[error("malformed request: {0}")]
    Malformed(RequestField),
}

impl Socks5Error {
    /// The reply code this error is answered with; `None` for a greeting
    /// error, which has no reply.
    pub const fn reply_code(&self) -> Option<ReplyCode> {
        match self {
            Socks5Error::GreetingVersion(_) => None,
            Socks5Error::CommandNotSupported(_) => Some(ReplyCode::CommandNotSupported),
            Socks5Error::AddressTypeNotSupported(_) => Some(ReplyCode::AddressTypeNotSupported),
            Socks5Error::Malformed(_) => Some(ReplyCode::GeneralFailure),
        }
    }

    /// The reply to write (in one write) before closing; `None` for a greeting error.
    pub fn reply(&self) -> Option<[u8; ERROR_REPLY_LEN]> {
        self.reply_code().map(error_reply)
    }
}

/// The outcome of a greeting: which method the relay selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// `00` was offered: answer `05 00` and read the request.
    NoAuth,
    /// `00` was not offered: answer `05 FF` and close.
    NoneAcceptable,
}

impl Method {
    /// The method-selection message to write in one write.
    pub const fn reply(self) -> [u8; 2] {
        match self {
            Method::NoAuth => [VERSION, METHOD_NO_AUTH],
            Method::NoneAcceptable => [VERSION, METHOD_NONE_ACCEPTABLE],
        }
    }
}

/// Decodes the greeting `05 <n> <n methods>` from the start of `buf`.
///
/// - `Ok(None)`: read more.
/// - `Ok(Some(method))`: the greeting's bytes are removed from `buf`; a
///   request sent right behind it stays there.
/// - `Err(_)`: not a SOCKS5 greeting; close without a reply.
pub fn decode_greeting(buf: &mut BytesMut) -> Result<Option<Method>, Socks5Error> {
    let Some(&version) = buf.first() else {
        return Ok(None);
    };
    if version != VERSION {
        return Err(Socks5Error::GreetingVersion(version));
    }
    let Some(&n) = buf.get(1) else {
        return Ok(None);
    };
    let len = 2 + usize::from(n);
    if buf.len() < len {
        return Ok(None);
    }
    let greeting = buf.split_to(len);
    Ok(Some(if greeting[2..].contains(&METHOD_NO_AUTH) {
        Method::NoAuth
    } else {
        Method::NoneAcceptable
    }))
}

/// Decodes the request `05 01 00 03 28 <40 lowercase hex> 00 00` from the
/// start of `buf`.
///
/// - `Ok(None)`: the bytes so far can still become a valid request; read more.
/// - `Ok(Some(hash))`: the request's 47 bytes are removed from `buf`; bytes
///   the client sent behind it stay there (they are delivered after activation).
/// - `Err(error)`: answer [`Socks5Error::reply`] and close.
///
/// The fields are checked in wire order, so a BIND request is refused as a
/// command (`07`) before its address type is looked at.
pub fn decode_request(buf: &mut BytesMut) -> Result<Option<StreamHash>, Socks5Error> {
    for (i, &b) in buf.iter().take(REQUEST_LEN).enumerate() {
        let error = match i {
            0 if b != VERSION => Socks5Error::Malformed(RequestField::Version),
            1 if b != CMD_CONNECT => Socks5Error::CommandNotSupported(b),
            2 if b != 0 => Socks5Error::Malformed(RequestField::Reserved),
            3 if b != ATYP_DOMAIN => Socks5Error::AddressTypeNotSupported(b),
            4 if b != HASH_HEX_LEN as u8 => Socks5Error::Malformed(RequestField::HashLength),
            5..45 if !is_lower_hex(b) => Socks5Error::Malformed(RequestField::Hash),
            45..47 if b != 0 => Socks5Error::Malformed(RequestField::Port),
            _ => continue,
        };
        return Err(error);
    }
    if buf.len() < REQUEST_LEN {
        return Ok(None);
    }
    let request = buf.split_to(REQUEST_LEN);
    Ok(Some(
        parse_hex(&request[5..5 + HASH_HEX_LEN]).expect("checked lowercase hex"),
    ))
}

/// The greeting a client sends: version 5, one method, "no authentication".
pub const GREETING: [u8; 3] = [VERSION, 0x01, METHOD_NO_AUTH];

/// The request a client sends for this hash.
pub fn encode_request(hash: &StreamHash) -> [u8; REQUEST_LEN] {
    with_hash(REQUEST_HEAD, hash)
}

/// The relay's answer to an accepted request: `05 00 00 03 28 <hash> 00 00`
/// (the request's own bytes with `REP` 0 where `CMD` was), written in one write.
pub fn success_reply(hash: &StreamHash) -> [u8; REQUEST_LEN] {
    let mut head = REQUEST_HEAD;
    head[1] = ReplyCode::Succeeded.as_u8();
    with_hash(head, hash)
}

/// An error reply: `05 REP 00 01 00 00 00 00 00 00`. A refused request has
/// no bound address, so it carries IPv4 0.0.0.0 port 0, as other SOCKS5
/// servers send.
pub const fn error_reply(code: ReplyCode) -> [u8; ERROR_REPLY_LEN] {
    [VERSION, code.as_u8(), 0x00, ATYP_IPV4, 0, 0, 0, 0, 0, 0]
}

fn with_hash(head: [u8; 5], hash: &StreamHash) -> [u8; REQUEST_LEN] {
    let mut out = [0u8; REQUEST_LEN];
    out[..5].copy_from_slice(&head);
    out[5..5 + HASH_HEX_LEN].copy_from_slice(&hash.to_hex());
    // The port stays 0.
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash() -> StreamHash {
        StreamHash::of(
            "vxf9n471bn46",
            "requester@example.com/foo",
            "target@example.org/bar",
        )
    }

    #[test]
    fn hash_is_sha1_of_the_concatenation_in_lowercase_hex() {
        // printf 'vxf9n471bn46requester@example.com/footarget@example.org/bar' | sha1sum
        assert_eq!(
            hash().to_string(),
            "98b8d688d0f5d895fd41c5e7309a2e9e33ba32ff"
        );
        assert_eq!(hash().to_string().parse::<StreamHash>(), Ok(hash()));
        assert!(
            hash()
                .to_string()
                .to_uppercase()
                .parse::<StreamHash>()
                .is_err()
        );
        assert!("abc".parse::<StreamHash>().is_err());
    }

    #[test]
    fn greeting_selects_no_auth_only_when_offered() {
        for (bytes, method) in [
            (&[5, 1, 0][..], Method::NoAuth),
            (&[5, 3, 2, 1, 0], Method::NoAuth),
            (&[5, 1, 2], Method::NoneAcceptable),
            (&[5, 0], Method::NoneAcceptable),
        ] {
            let mut buf = BytesMut::from(bytes);
            buf.extend_from_slice(&[5, 1]);
            assert_eq!(decode_greeting(&mut buf), Ok(Some(method)), "{bytes:?}");
            assert_eq!(&buf[..], &[5, 1], "the request behind it stays");
        }
        assert_eq!(Method::NoAuth.reply(), [0x05, 0x00]);
        assert_eq!(Method::NoneAcceptable.reply(), [0x05, 0xFF]);
        for prefix in [&[][..], &[5], &[5, 2], &[5, 2, 0]] {
            assert_eq!(decode_greeting(&mut BytesMut::from(prefix)), Ok(None));
        }
        assert_eq!(
            decode_greeting(&mut BytesMut::from(&[4, 1, 0][..])),
            Err(Socks5Error::GreetingVersion(4))
        );
    }

    #[test]
    fn request_round_trips_and_keeps_early_bytes() {
        let mut buf = BytesMut::from(&encode_request(&hash())[..]);
        buf.extend_from_slice(b"early");
        assert_eq!(decode_request(&mut buf), Ok(Some(hash())));
        assert_eq!(&buf[..], b"early");
        let mut want = vec![5, 1, 0, 3, 40];
        want.extend_from_slice(hash().to_string().as_bytes());
        want.extend_from_slice(&[0, 0]);
        assert_eq!(&encode_request(&hash())[..], &want[..]);
        want[1] = 0;
        assert_eq!(&success_reply(&hash())[..], &want[..]);
    }

    #[test]
    fn every_strict_prefix_of_a_request_needs_more() {
        let bytes = encode_request(&hash());
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(decode_request(&mut buf), Ok(None), "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed");
        }
    }

    #[test]
    fn bad_requests_get_their_reply_codes_at_the_first_bad_byte() {
        let good = encode_request(&hash());
        let with = |i: usize, b: u8| {
            let mut v = good.to_vec();
            v[i] = b;
            v
        };
        let cases: Vec<(Vec<u8>, Socks5Error, u8)> = vec![
            (with(0, 4), Socks5Error::Malformed(RequestField::Version), 1),
            (vec![5, 2], Socks5Error::CommandNotSupported(2), 7), // BIND
            (vec![5, 3], Socks5Error::CommandNotSupported(3), 7), // UDP ASSOCIATE
            (
                with(2, 1),
                Socks5Error::Malformed(RequestField::Reserved),
                1,
            ),
            (
                vec![5, 1, 0, 1, 127, 0, 0, 1, 0, 80],
                Socks5Error::AddressTypeNotSupported(1),
                8,
            ),
            (vec![5, 1, 0, 4], Socks5Error::AddressTypeNotSupported(4), 8),
            (
                vec![5, 1, 0, 3, 39],
                Socks5Error::Malformed(RequestField::HashLength),
                1,
            ),
            (
                vec![5, 1, 0, 3, 41],
                Socks5Error::Malformed(RequestField::HashLength),
                1,
            ),
            (
                with(20, b'A'),
                Socks5Error::Malformed(RequestField::Hash),
                1,
            ),
            (with(5, b'g'), Socks5Error::Malformed(RequestField::Hash), 1),
            (with(46, 1), Socks5Error::Malformed(RequestField::Port), 1),
        ];
        for (bytes, error, code) in cases {
            let mut buf = BytesMut::from(&bytes[..]);
            assert_eq!(decode_request(&mut buf), Err(error.clone()), "{bytes:?}");
            let reply = error.reply().expect("a request error has a reply");
            assert_eq!(reply, [5, code, 0, 1, 0, 0, 0, 0, 0, 0], "{bytes:?}");
        }
        // A BIND request for a valid hash is refused for its command, not read to the end.
        assert_eq!(
            decode_request(&mut BytesMut::from(&with(1, 2)[..])),
            Err(Socks5Error::CommandNotSupported(2))
        );
        assert_eq!(Socks5Error::GreetingVersion(4).reply(), None);
        assert_eq!(
            error_reply(ReplyCode::NotAllowed),
            [5, 2, 0, 1, 0, 0, 0, 0, 0, 0]
        );
    }
}
