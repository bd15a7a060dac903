use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::socks5::StreamHash;

/// What precedes a stream hash in the preimage of its registration id.
const STREAM_TAG: &[u8] = b"\0socks5\0";

/// The name of a registration: SHA-256 of `key \0 initiator-jid \0 target-jid`
/// (docs/PROTOCOL.md, section 3), shown as lowercase hex.
///
/// It names a session in the rendezvous store and in logs; the key itself is
/// never logged.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegistrationId([u8; 32]);

impl RegistrationId {
    /// The id of a triple.
    pub fn of(key: &str, initiator: &str, target: &str) -> Self {
        let mut h = Sha256::new();
        h.update(key.as_bytes());
        h.update([0]);
        h.update(initiator.as_bytes());
        h.update([0]);
        h.update(target.as_bytes());
        RegistrationId(h.finalize().into())
    }

    /// The id of a XEP-0065 bytestream's registration (docs/PROTOCOL.md section
    /// 6): SHA-256 of `\0socks5\0` and the 20 bytes of its [`StreamHash`].
    ///
    /// A separate namespace: a DTCP triple's preimage begins with its key,
    /// which is never empty, so it never begins with NUL and the two kinds
    /// of id cannot collide.
    pub fn of_stream(hash: &StreamHash) -> Self {
        let mut h = Sha256::new();
        h.update(STREAM_TAG);
        h.update(hash.as_bytes());
        RegistrationId(h.finalize().into())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Wraps 32 raw bytes (as sent over the forwarding plane).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        RegistrationId(bytes)
    }
}

impl fmt::Display for RegistrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for RegistrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RegistrationId({self})")
    }
}

/// A string that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a registration id is 64 hex digits")]
pub struct ParseIdError;

impl FromStr for RegistrationId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| ParseIdError)?;
        Ok(RegistrationId(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_sha256_of_nul_joined_triple() {
        // sha256(b"k\0a@b\0c@d"), computed independently with coreutils:
        // printf 'k\0a@b\0c@d' | sha256sum
        let id = RegistrationId::of("k", "a@b", "c@d");
        assert_eq!(
            id.to_string(),
            "3b6525e9b4f91818a2abb4cbe8f651828fed1612971bfd030c553d53589a2bbd"
        );
        assert_eq!(id.to_string().parse::<RegistrationId>(), Ok(id));
        assert!("xyz".parse::<RegistrationId>().is_err());
    }

    #[test]
    fn stream_ids_are_sha256_of_the_tagged_hash() {
        let hash: StreamHash = "0123456789abcdef0123456789abcdef01234567".parse().unwrap();
        let id = RegistrationId::of_stream(&hash);
        // printf '\0socks5\0' | cat - <(xxd -r -p <<< 0123456789abcdef0123456789abcdef01234567) | sha256sum
        assert_eq!(
            id.to_string(),
            "090bf3a6708523552a7c19f842516dd2795749db1e105a7d484bc0ffa85202b4"
        );
        assert_ne!(id, RegistrationId::of("socks5", "", ""));
    }
}
