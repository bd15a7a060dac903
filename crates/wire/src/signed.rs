//! Signed keys (docs/PROTOCOL.md section 5), and the secrets that sign them.
//!
//! A signed key is `v1.<expiry>.<nonce>.<mac>`, where `mac` is the unpadded
//! base64url of HMAC-SHA256(secret, `v1.<expiry>.<nonce>` `\0` initiator `\0`
//! target). Pure: "now" is a parameter, so every case can be tested.

use std::fmt;
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The version prefix of a signed key.
pub const KEY_VERSION: &str = "v1";
/// Shortest nonce a signed key may carry.
pub const MIN_NONCE_LEN: usize = 8;
/// Longest nonce a signed key may carry.
pub const MAX_NONCE_LEN: usize = 64;
/// Length of the MAC field: 32 bytes in unpadded base64url.
pub const MAC_FIELD_LEN: usize = 43;
/// Default of `--max-key-lifetime`: how far ahead an expiry may be, in seconds.
pub const DEFAULT_MAX_KEY_LIFETIME: u64 = 86_400;

type HmacSha256 = Hmac<Sha256>;

/// Why a key is refused (every case answers `forbidden`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not of the form `v1.<expiry>.<nonce>.<mac>`.
    #[error("the key is not a signed key")]
    Malformed,
    /// The MAC matches none of the configured secrets.
    #[error("the key's signature does not verify")]
    BadSignature,
    /// The expiry is in the past.
    #[error("the key has expired")]
    Expired,
    /// The expiry is further ahead than the longest lifetime allowed.
    #[error("the key's expiry is too far ahead")]
    TooLong,
}

/// One or more secrets: the first signs, every one verifies (a rotation is
/// add, roll, remove). `Debug` never shows them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets(Arc<[Box<[u8]>]>);

impl Secrets {
    /// Secrets in this order; empty ones are dropped.
    pub fn new<I, S>(secrets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        Secrets(
            secrets
                .into_iter()
                .filter(|s| !s.as_ref().is_empty())
                .map(|s| Box::from(s.as_ref()))
                .collect(),
        )
    }

    /// Secrets from a file's text: one per line, surrounding white space and
    /// empty lines ignored.
    pub fn from_lines(text: &str) -> Self {
        Self::new(text.lines().map(str::trim).filter(|l| !l.is_empty()))
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The secret that signs, if any.
    pub fn signing(&self) -> Option<&[u8]> {
        self.0.first().map(|s| &s[..])
    }

    /// Every secret, the signing one first.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.0.iter().map(|s| &s[..])
    }

    /// HMAC-SHA256 of `parts`, each followed by a NUL except the last, under
    /// the signing secret; `None` without secrets.
    pub fn mac(&self, parts: &[&[u8]]) -> Option<[u8; 32]> {
        self.signing().map(|s| mac_parts(s, parts))
    }

    /// Whether `mac` is the HMAC of `parts` under any secret, each compared
    /// in constant time (`hmac`'s `verify_slice`).
    pub fn verify(&self, parts: &[&[u8]], mac: &[u8]) -> bool {
        // Every secret is tried, so the time does not tell which one matched.
        self.iter()
            .map(|s| mac_state(s, parts).verify_slice(mac).is_ok())
            .fold(false, |any, ok| any | ok)
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets(<{} hidden>)", self.0.len())
    }
}

/// A shared, replaceable set of [`Secrets`]: a file watcher swaps new ones
/// in, and every check reads the current ones.
#[derive(Clone, Debug, Default)]
pub struct Keyring(Arc<RwLock<Secrets>>);

impl Keyring {
    /// A keyring holding `secrets`.
    pub fn new(secrets: Secrets) -> Self {
        Keyring(Arc::new(RwLock::new(secrets)))
    }

    /// The secrets now in force (a cheap clone of an `Arc`).
    pub fn current(&self) -> Secrets {
        // A writer never panics while holding the lock; if one did, its value is still whole.
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the secrets.
    pub fn set(&self, secrets: Secrets) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = secrets;
    }
}

fn mac_state(secret: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            mac.update(&[0]);
        }
        mac.update(part);
    }
    mac
}

fn mac_parts(secret: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    mac_state(secret, parts).finalize().into_bytes().into()
}

/// Whether a nonce has the allowed length and alphabet.
fn valid_nonce(nonce: &str) -> bool {
    (MIN_NONCE_LEN..=MAX_NONCE_LEN).contains(&nonce.len())
        && nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Signs a key for two JIDs: `v1.<expiry>.<nonce>.<mac>`. The nonce must be
/// 8 to 64 characters of `[A-Za-z0-9_-]`.
pub fn sign(
    secret: &[u8],
    expiry: u64,
    nonce: &str,
    initiator: &str,
    target: &str,
) -> Result<String, KeyError> {
    if !valid_nonce(nonce) {
        return Err(KeyError::Malformed);
    }
    let signed = format!("{KEY_VERSION}.{expiry}.{nonce}");
    let mac = mac_parts(
        secret,
        &[signed.as_bytes(), initiator.as_bytes(), target.as_bytes()],
    );
    Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac)))
}

/// Checks a key presented with these JIDs at Unix time `now` (seconds):
/// its form, its MAC under any of `secrets`, its expiry and how far ahead
/// that is (`max_lifetime` seconds at most). Returns the expiry.
pub fn verify(
    key: &str,
    initiator: &str,
    target: &str,
    secrets: &Secrets,
    now: u64,
    max_lifetime: u64,
) -> Result<u64, KeyError> {
    let (signed, mac_b64) = key.rsplit_once('.').ok_or(KeyError::Malformed)?;
    let mut fields = signed.splitn(3, '.');
    let (Some(version), Some(expiry), Some(nonce)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(KeyError::Malformed);
    };
    // A leading `+` or zero would give one key several spellings.
    let canonical = !expiry.is_empty()
        && expiry.bytes().all(|b| b.is_ascii_digit())
        && (expiry == "0" || !expiry.starts_with('0'));
    if version != KEY_VERSION || !canonical || !valid_nonce(nonce) {
        return Err(KeyError::Malformed);
    }
    let expiry: u64 = expiry.parse().map_err(|_| KeyError::Malformed)?;
    if mac_b64.len() != MAC_FIELD_LEN {
        return Err(KeyError::Malformed);
    }
    let mac = URL_SAFE_NO_PAD
        .decode(mac_b64)
        .map_err(|_| KeyError::Malformed)?;
    let parts = [signed.as_bytes(), initiator.as_bytes(), target.as_bytes()];
    if !secrets.verify(&parts, &mac) {
        return Err(KeyError::BadSignature);
    }
    if expiry <= now {
        return Err(KeyError::Expired);
    }
    if expiry - now > max_lifetime {
        return Err(KeyError::TooLong);
    }
    Ok(expiry)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;
    const I: &str = "romeo@montague.lit/orchard";
    const T: &str = "juliet@capulet.lit/balcony";

    fn secrets(s: &[&str]) -> Secrets {
        Secrets::new(s.iter().map(|s| s.as_bytes()))
    }

    fn check(key: &str, s: &Secrets) -> Result<u64, KeyError> {
        verify(key, I, T, s, NOW, DEFAULT_MAX_KEY_LIFETIME)
    }

    #[test]
    fn a_signed_key_verifies_and_matches_the_protocol_text() {
        let key = sign(b"s3cret", NOW + 60, "n0nce-_x", I, T).unwrap();
        assert!(key.starts_with(&format!("v1.{}.n0nce-_x.", NOW + 60)));
        assert_eq!(key.rsplit('.').next().unwrap().len(), MAC_FIELD_LEN);
        assert_eq!(check(&key, &secrets(&["s3cret"])), Ok(NOW + 60));
        // The MAC input is spelled out in docs/PROTOCOL.md: recompute it by hand.
        let input = format!("v1.{}.n0nce-_x\0{I}\0{T}", NOW + 60);
        let mut mac = HmacSha256::new_from_slice(b"s3cret").unwrap();
        mac.update(input.as_bytes());
        let expected = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        assert!(key.ends_with(&expected));
    }

    #[test]
    fn every_forbidden_case() {
        let s = secrets(&["s3cret"]);
        let good = sign(b"s3cret", NOW + 60, "abcdefgh", I, T).unwrap();
        assert_eq!(check("plain-key", &s), Err(KeyError::Malformed));
        assert_eq!(
            check(&good.replacen("v1", "v2", 1), &s),
            Err(KeyError::Malformed)
        );
        assert_eq!(check(&good[..good.len() - 1], &s), Err(KeyError::Malformed));
        let short_nonce = format!("v1.{}.abc.{}", NOW + 60, "A".repeat(43));
        assert_eq!(check(&short_nonce, &s), Err(KeyError::Malformed));
        let bad_nonce = format!("v1.{}.abc$defgh.{}", NOW + 60, "A".repeat(43));
        assert_eq!(check(&bad_nonce, &s), Err(KeyError::Malformed));
        let plus = good.replacen(&format!(".{}", NOW + 60), &format!(".+{}", NOW + 60), 1);
        assert_eq!(check(&plus, &s), Err(KeyError::Malformed));
        // Another secret, or other JIDs.
        assert_eq!(
            check(&good, &secrets(&["other"])),
            Err(KeyError::BadSignature)
        );
        assert_eq!(
            verify(&good, T, I, &s, NOW, DEFAULT_MAX_KEY_LIFETIME),
            Err(KeyError::BadSignature)
        );
        assert_eq!(
            check(&good, &Secrets::default()),
            Err(KeyError::BadSignature)
        );
        let expired = sign(b"s3cret", NOW, "abcdefgh", I, T).unwrap();
        assert_eq!(check(&expired, &s), Err(KeyError::Expired));
        let far = sign(
            b"s3cret",
            NOW + DEFAULT_MAX_KEY_LIFETIME + 1,
            "abcdefgh",
            I,
            T,
        )
        .unwrap();
        assert_eq!(check(&far, &s), Err(KeyError::TooLong));
        let edge = sign(b"s3cret", NOW + DEFAULT_MAX_KEY_LIFETIME, "abcdefgh", I, T).unwrap();
        assert!(check(&edge, &s).is_ok());
        assert_eq!(sign(b"s", 1, "short", I, T), Err(KeyError::Malformed));
    }

    #[test]
    fn any_configured_secret_verifies_and_the_first_signs() {
        let old = sign(b"old", NOW + 60, "abcdefgh", I, T).unwrap();
        let new = sign(b"new", NOW + 60, "abcdefgh", I, T).unwrap();
        let both = secrets(&["new", "old"]);
        assert!(check(&old, &both).is_ok());
        assert!(check(&new, &both).is_ok());
        assert_eq!(both.signing(), Some(&b"new"[..]));
        assert_eq!(check(&old, &secrets(&["new"])), Err(KeyError::BadSignature));
    }

    #[test]
    fn secrets_from_lines_and_hidden() {
        let s = Secrets::from_lines("  first \n\nsecond\r\n");
        assert_eq!(s.len(), 2);
        assert_eq!(s.signing(), Some(&b"first"[..]));
        assert!(!format!("{s:?}").contains("first"));
        let ring = Keyring::new(s);
        ring.set(Secrets::from_lines("third"));
        assert_eq!(ring.current().signing(), Some(&b"third"[..]));
        let mac = ring.current().mac(&[b"a", b"b"]).unwrap();
        assert!(ring.current().verify(&[b"a", b"b"], &mac));
        assert!(
            !ring.current().verify(&[b"a", b"b"], &mac[..31]),
            "a truncated MAC"
        );
    }
}
