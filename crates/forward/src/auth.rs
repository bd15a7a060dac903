//! How nodes prove to each other that they hold the cluster secret without
//! ever sending it.
//!
//! Every Bridge call carries one header, [`AUTH_HEADER`]:
//!
//! ```text
//! v1 <caller node id> <callee node id> <address dialed> <registration id hex> <unix ms> <nonce> <mac>
//! ```
//!
//! where `mac` is the unpadded base64url HMAC-SHA256, under the signing
//! cluster secret, of the seven fields before it joined by NUL. The callee
//! checks the MAC against every secret it has (rotation), that the callee id
//! and address are its own, that the registration is the one the call's
//! `open` frame names, that the time is within [`AUTH_WINDOW`] of its own,
//! and that it has not seen the nonce within that window. What a listener
//! captures is therefore good for one call, to one node, for one
//! registration, within seconds, and only once.
//!
//! The same secrets seal the store's registration records ([`PlaneAuth::seal`]):
//! a node dials only an owner whose record the cluster wrote for that very
//! registration. The seal binds the registration id, the owner's node id and
//! its address: a record changed in any of them, or copied from another
//! registration, does not verify, so whoever can write the store can make a
//! pairing fail but never send a claim anywhere the cluster did not.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dtcp_wire::Keyring;
use http::{HeaderMap, HeaderValue};
use tonic::Status;

/// The request header that carries a Bridge call's authenticator.
pub const AUTH_HEADER: &str = "x-dtcp-auth";
/// The version of the authenticator's format.
const AUTH_VERSION: &str = "v1";
/// How far a call's timestamp may be from the callee's clock, either way;
/// nonces are remembered this long past their timestamp.
pub const AUTH_WINDOW: Duration = Duration::from_secs(30);
/// Most nonces remembered at once: beyond it calls are refused until old
/// ones age out (about 3,000 Bridges a second for the whole window).
pub const REPLAY_CACHE_CAPACITY: usize = 200_000;
/// Longest nonce accepted (the dialer sends 32 hex digits).
const MAX_NONCE_LEN: usize = 64;
/// The domain-separation tag of a sealed registration record (v2: the
/// registration id is sealed too).
const SEAL_TAG: &[u8] = b"dtcp-record-v2";
/// The domain-separation tag of a sealed heartbeat.
const HEARTBEAT_TAG: &[u8] = b"dtcp-heartbeat-v1";

/// Why a call was refused, as the `reason` label of
/// `dtcp_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// Missing, malformed, for another address or registration, or a MAC
    /// that matches no secret.
    PlaneMac,
    /// A timestamp outside the window, or a nonce seen within it.
    PlaneReplay,
    /// A lane whose preamble is malformed or whose token's MAC fails.
    LaneToken,
    /// A lane whose token is past its expiry.
    LaneExpired,
    /// A lane whose token was used before (or was never offered here).
    LaneReplay,
}

impl AuthFailure {
    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            AuthFailure::PlaneMac => "plane_mac",
            AuthFailure::PlaneReplay => "plane_replay",
            AuthFailure::LaneToken => "lane_token",
            AuthFailure::LaneExpired => "lane_expired",
            AuthFailure::LaneReplay => "lane_replay",
        }
    }
}

/// The authenticator's fields, as a callee reads them.
#[derive(Debug)]
pub struct Claimed {
    /// The node that placed the call.
    pub caller: String,
    /// The node id the caller meant to reach.
    pub callee: String,
    /// The registration the call may open.
    pub registration: [u8; 32],
}

/// The plane's secrets and the callee's memory of nonces. `None` secrets:
/// an insecure plane (`--insecure-plane`), which signs and checks nothing.
#[derive(Debug, Clone, Default)]
pub struct PlaneAuth {
    keys: Option<Keyring>,
    seen: Arc<Mutex<ReplayCache>>,
}

#[derive(Debug, Default)]
struct ReplayCache {
    /// Nonce to the Unix ms after which it may be forgotten.
    nonces: HashMap<Box<str>, u64>,
    /// The same, oldest first, to forget them in order.
    order: VecDeque<(u64, Box<str>)>,
}

impl ReplayCache {
    /// Records `nonce` until `until`; false if it is already there (or there is no room).
    fn insert(&mut self, nonce: &str, until: u64, now: u64) -> Result<(), AuthFailure> {
        while let Some((t, _)) = self.order.front()
            && *t < now
        {
            let (_, old) = self.order.pop_front().expect("just seen");
            self.nonces.remove(&old);
        }
        if self.nonces.contains_key(nonce) {
            return Err(AuthFailure::PlaneReplay);
        }
        if self.nonces.len() >= REPLAY_CACHE_CAPACITY {
            // Fail closed: a nonce that cannot be remembered could be replayed.
            return Err(AuthFailure::PlaneReplay);
        }
        self.nonces.insert(nonce.into(), until);
        // Timestamps may arrive a little out of order: the queue is only
        // roughly sorted, so an entry may outlive its time by a window at most.
        self.order.push_back((until.max(now), nonce.into()));
        Ok(())
    }
}

/// Milliseconds since the Unix epoch (0 for a clock before it).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl PlaneAuth {
    /// Authenticates with `keys` (the first signs, all verify), or not at all.
    pub fn new(keys: Option<Keyring>) -> Self {
        PlaneAuth {
            keys,
            seen: Arc::default(),
        }
    }

    /// The HMAC of `parts` under the signing secret; `None` on an insecure plane.
    pub(crate) fn mac(&self, parts: &[&[u8]]) -> Option<[u8; 32]> {
        self.keys.as_ref()?.current().mac(parts)
    }

    /// Whether `mac` is the HMAC of `parts` under any secret (never on an
    /// insecure plane).
    pub(crate) fn verify(&self, parts: &[&[u8]], mac: &[u8]) -> bool {
        self.keys
            .as_ref()
            .is_some_and(|k| k.current().verify(parts, mac))
    }

    /// Whether calls and records are authenticated.
    pub fn is_secure(&self) -> bool {
        self.keys.is_some()
    }

    /// The authenticator of a call from `caller` to `callee` at `addr` for
    /// `registration`, at Unix time `now_ms`.
    pub fn authenticator(
        &self,
        caller: &str,
        callee: &str,
        addr: &str,
        registration: &[u8; 32],
        now_ms: u64,
        nonce: &str,
    ) -> Option<String> {
        let keys = self.keys.as_ref()?.current();
        let (reg, ts) = (hex::encode(registration), now_ms.to_string());
        let fields = [AUTH_VERSION, caller, callee, addr, &reg, &ts, nonce];
        let mac = keys.mac(&fields.map(str::as_bytes))?;
        Some(format!(
            "{} {}",
            fields.join(" "),
            URL_SAFE_NO_PAD.encode(mac)
        ))
    }

    /// Adds a fresh authenticator to an outgoing call's headers.
    pub fn attach(
        &self,
        headers: &mut HeaderMap,
        caller: &str,
        callee: &str,
        addr: &str,
        registration: &[u8; 32],
    ) -> Result<(), Status> {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let Some(value) = self.authenticator(caller, callee, addr, registration, unix_ms(), &nonce)
        else {
            return Ok(());
        };
        let value = HeaderValue::try_from(value)
            .map_err(|_| Status::internal("a node id or address is not a valid header value"))?;
        headers.insert(AUTH_HEADER, value);
        Ok(())
    }

    /// Callee side: checks the headers of a call placed to this node, `addr`
    /// being the address it advertises, at Unix time `now_ms`. On success the
    /// nonce is spent. `Ok(None)` on an insecure plane.
    pub fn check(
        &self,
        headers: &HeaderMap,
        addr: &str,
        now_ms: u64,
    ) -> Result<Option<Claimed>, AuthFailure> {
        let Some(keys) = &self.keys else {
            return Ok(None);
        };
        let value = headers
            .get(AUTH_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or(AuthFailure::PlaneMac)?;
        let fields: Vec<&str> = value.split(' ').collect();
        let [version, caller, callee, dialed, reg, ts, nonce, mac] = fields[..] else {
            return Err(AuthFailure::PlaneMac);
        };
        let mac = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| AuthFailure::PlaneMac)?;
        let signed = [version, caller, callee, dialed, reg, ts, nonce].map(str::as_bytes);
        if version != AUTH_VERSION
            || nonce.is_empty()
            || nonce.len() > MAX_NONCE_LEN
            || !keys.current().verify(&signed, &mac)
        {
            return Err(AuthFailure::PlaneMac);
        }
        // Signed by the cluster: now whether it was meant for this address.
        if dialed != addr {
            return Err(AuthFailure::PlaneMac);
        }
        let mut registration = [0; 32];
        hex::decode_to_slice(reg, &mut registration).map_err(|_| AuthFailure::PlaneMac)?;
        let ts: u64 = ts.parse().map_err(|_| AuthFailure::PlaneMac)?;
        let window = AUTH_WINDOW.as_millis() as u64;
        if ts.abs_diff(now_ms) > window {
            return Err(AuthFailure::PlaneReplay);
        }
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(nonce, ts + window, now_ms)?;
        Ok(Some(Claimed {
            caller: caller.to_owned(),
            callee: callee.to_owned(),
            registration,
        }))
    }

    /// Callee side, at the current time: see [`PlaneAuth::check`].
    pub fn check_now(
        &self,
        headers: &HeaderMap,
        addr: &str,
    ) -> Result<Option<Claimed>, AuthFailure> {
        self.check(headers, addr, unix_ms())
    }

    /// The seal of the heartbeat of `node_id` at `addr`; `None` on an
    /// insecure plane.
    pub fn heartbeat_seal(&self, node_id: &str, addr: &str) -> Option<String> {
        let keys = self.keys.as_ref()?.current();
        let mac = keys.mac(&[HEARTBEAT_TAG, node_id.as_bytes(), addr.as_bytes()])?;
        Some(URL_SAFE_NO_PAD.encode(mac))
    }

    /// Whether a heartbeat's seal is the cluster's (always, on an insecure plane).
    pub fn verify_heartbeat(&self, node_id: &str, addr: &str, seal: Option<&str>) -> bool {
        let Some(keys) = &self.keys else {
            return true;
        };
        let Some(mac) = seal.and_then(|s| URL_SAFE_NO_PAD.decode(s).ok()) else {
            return false;
        };
        let parts = [HEARTBEAT_TAG, node_id.as_bytes(), addr.as_bytes()];
        keys.current().verify(&parts, &mac)
    }

    /// The seal of `registration`'s record naming `node_id` at `addr` as
    /// its owner; `None` on an insecure plane.
    pub fn seal(&self, registration: &[u8; 32], node_id: &str, addr: &str) -> Option<String> {
        let keys = self.keys.as_ref()?.current();
        let mac = keys.mac(&[SEAL_TAG, registration, node_id.as_bytes(), addr.as_bytes()])?;
        Some(URL_SAFE_NO_PAD.encode(mac))
    }

    /// Whether a record's seal is the cluster's for that registration
    /// (always, on an insecure plane).
    pub fn verify_seal(
        &self,
        registration: &[u8; 32],
        node_id: &str,
        addr: &str,
        seal: Option<&str>,
    ) -> bool {
        let Some(keys) = &self.keys else {
            return true;
        };
        let Some(mac) = seal.and_then(|s| URL_SAFE_NO_PAD.decode(s).ok()) else {
            return false;
        };
        let parts = [SEAL_TAG, registration, node_id.as_bytes(), addr.as_bytes()];
        keys.current().verify(&parts, &mac)
    }
}

#[cfg(test)]
mod tests {
    use dtcp_wire::Secrets;

    use super::*;

    const ADDR: &str = "10.0.0.2:7778";
    const NOW: u64 = 1_800_000_000_000;

    fn auth(secrets: &str) -> PlaneAuth {
        PlaneAuth::new(Some(Keyring::new(Secrets::from_lines(secrets))))
    }

    fn headers(value: String) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTH_HEADER, value.parse().unwrap());
        h
    }

    #[test]
    fn a_call_verifies_once_for_its_node_and_window() {
        let (a, b) = (auth("s1"), auth("s1"));
        let reg = [7; 32];
        let value = a.authenticator("A", "B", ADDR, &reg, NOW, "n1").unwrap();
        assert!(!value.contains("s1"));
        let claimed = b
            .check(&headers(value.clone()), ADDR, NOW + 1000)
            .unwrap()
            .unwrap();
        assert_eq!(
            (claimed.caller.as_str(), claimed.callee.as_str()),
            ("A", "B")
        );
        assert_eq!(claimed.registration, reg);
        let replay = b.check(&headers(value.clone()), ADDR, NOW + 2000);
        assert_eq!(replay.unwrap_err(), AuthFailure::PlaneReplay);
        let elsewhere = auth("s1").check(&headers(value), "10.0.0.3:7778", NOW);
        assert_eq!(elsewhere.unwrap_err(), AuthFailure::PlaneMac);
        let late = a.authenticator("A", "B", ADDR, &reg, NOW, "n2").unwrap();
        let too_late = NOW + AUTH_WINDOW.as_millis() as u64 + 1;
        assert_eq!(
            b.check(&headers(late), ADDR, too_late).unwrap_err(),
            AuthFailure::PlaneReplay
        );
    }

    #[test]
    fn a_changed_field_or_another_secret_fails_and_rotation_works() {
        let b = auth("new\nold");
        let reg = [7; 32];
        let value = auth("s1")
            .authenticator("A", "B", ADDR, &reg, NOW, "n1")
            .unwrap();
        assert_eq!(
            b.check(&headers(value), ADDR, NOW).unwrap_err(),
            AuthFailure::PlaneMac
        );
        let old = auth("old")
            .authenticator("A", "B", ADDR, &reg, NOW, "n1")
            .unwrap();
        let rewritten = old.replace(&hex::encode(reg), &hex::encode([8; 32]));
        assert_eq!(
            b.check(&headers(rewritten), ADDR, NOW).unwrap_err(),
            AuthFailure::PlaneMac
        );
        assert!(
            b.check(&headers(old), ADDR, NOW).unwrap().is_some(),
            "the old secret still verifies"
        );
        assert_eq!(
            b.check(&HeaderMap::new(), ADDR, NOW).unwrap_err(),
            AuthFailure::PlaneMac
        );
        assert!(
            PlaneAuth::new(None)
                .check(&HeaderMap::new(), ADDR, NOW)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn records_are_sealed_to_their_registration_owner_and_address() {
        let (a, reg) = (auth("s1"), [7; 32]);
        let seal = a.seal(&reg, "A", ADDR).unwrap();
        assert!(a.verify_seal(&reg, "A", ADDR, Some(&seal)));
        assert!(!a.verify_seal(&[8; 32], "A", ADDR, Some(&seal)));
        assert!(!a.verify_seal(&reg, "A", "10.9.9.9:1", Some(&seal)));
        assert!(!a.verify_seal(&reg, "B", ADDR, Some(&seal)));
        assert!(!auth("s2").verify_seal(&reg, "A", ADDR, Some(&seal)));
        assert!(!a.verify_seal(&reg, "A", ADDR, None));
        assert!(PlaneAuth::new(None).verify_seal(&reg, "A", ADDR, None));
        let beat = a.heartbeat_seal("A", ADDR).unwrap();
        assert!(a.verify_heartbeat("A", ADDR, Some(&beat)));
        assert!(!a.verify_heartbeat("B", ADDR, Some(&beat)));
        assert!(
            !a.verify_seal(&reg, "A", ADDR, Some(&beat)),
            "not a record's seal"
        );
        assert!(!a.verify_heartbeat("A", ADDR, None));
    }
}
