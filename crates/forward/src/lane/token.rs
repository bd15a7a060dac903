//! A lane's token and preamble: what the owner mints and the claimant
//! writes first on its lane (the format is in the parent module's doc).

use bytes::{BufMut, Bytes, BytesMut};

use super::{HEAD, LANE_MAGIC, LANE_TAG, LANE_VERSION, NONCE};
use crate::auth::PlaneAuth;

/// A token's fields, as the owner reads them.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Token<'a> {
    pub(super) registration: [u8; 32],
    pub(super) expires_ms: u64,
    pub(super) nonce: [u8; NONCE],
    pub(super) claimant: &'a str,
    pub(super) mac: [u8; 32],
}

impl<'a> Token<'a> {
    pub(super) fn parse(bytes: &'a [u8]) -> Option<Self> {
        let (registration, rest) = bytes.split_first_chunk::<32>()?;
        let (expires, rest) = rest.split_first_chunk::<8>()?;
        let (nonce, rest) = rest.split_first_chunk::<NONCE>()?;
        let (&len, rest) = rest.split_first()?;
        let (claimant, rest) = rest.split_at_checked(usize::from(len))?;
        let mac: [u8; 32] = rest.try_into().ok()?;
        Some(Token {
            registration: *registration,
            expires_ms: u64::from_be_bytes(*expires),
            nonce: *nonce,
            claimant: std::str::from_utf8(claimant).ok()?,
            mac,
        })
    }

    fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(32 + 8 + NONCE + 1 + self.claimant.len() + 32);
        out.put_slice(&self.registration);
        out.put_u64(self.expires_ms);
        out.put_slice(&self.nonce);
        out.put_u8(self.claimant.len() as u8);
        out.put_slice(self.claimant.as_bytes());
        out.put_slice(&self.mac);
        out.freeze()
    }
}

/// The MAC of a token, under the signing secret (`None` on an insecure plane).
fn token_mac(auth: &PlaneAuth, owner: &str, t: &Token<'_>) -> Option<[u8; 32]> {
    auth.mac(&token_parts(owner, t, &t.expires_ms.to_be_bytes()))
}

pub(super) fn token_parts<'a>(
    owner: &'a str,
    t: &'a Token<'_>,
    expires: &'a [u8; 8],
) -> [&'a [u8]; 7] {
    [
        LANE_TAG,
        &[LANE_VERSION],
        &t.registration,
        owner.as_bytes(),
        t.claimant.as_bytes(),
        expires,
        &t.nonce,
    ]
}

/// A lane token as the owner mints it, for `registration` claimed by the
/// node `claimant`, expiring at `expires_ms` (Unix ms). Public so that a
/// test can mint one (a forged or expired token, the right way).
pub fn mint_token(
    auth: &PlaneAuth,
    owner: &str,
    claimant: &str,
    registration: &[u8; 32],
    expires_ms: u64,
    nonce: [u8; NONCE],
) -> Bytes {
    let mut token = Token {
        registration: *registration,
        expires_ms,
        nonce,
        claimant,
        mac: [0; 32],
    };
    if let Some(mac) = token_mac(auth, owner, &token) {
        token.mac = mac;
    }
    token.encode()
}

/// The preamble a claimant writes on its lane before any byte of the
/// session: magic, version, and the token as the owner sent it.
pub fn preamble(token: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEAD + token.len());
    out.extend_from_slice(LANE_MAGIC);
    out.push(LANE_VERSION);
    out.extend_from_slice(&after_head(token));
    out
}

/// The preamble past its magic and version (which a dial sends as soon as
/// it connects): the token's length and the token.
pub(crate) fn after_head(token: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + token.len());
    out.extend_from_slice(&(token.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    out.extend_from_slice(token);
    out
}

/// Whether a connection's first byte is a lane's (on the forwarding port).
pub fn is_lane_start(first: u8) -> bool {
    first == LANE_MAGIC[0]
}
