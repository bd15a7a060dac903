//! The values the store writes into Redis and reads back: a registration's
//! record, a heartbeat, an announcement.

use dtcp_wire::RegistrationId;

use crate::rendezvous::{NodeInfo, Registered, StoreError};
use crate::text::shown;

/// The longest record (or `nodes` member) read from Redis: a relay writes
/// `<node id> <address> <seal>`, a UUID or an operator's word, a host name
/// of at most 253 bytes and its port, and a seal of about 50: under 400
/// bytes. Anything longer was planted by a Redis writer, and is refused
/// before it is read whole (a 4 MB record, read on every CONNECT's look,
/// would cost each node that much per look).
pub(crate) const MAX_RECORD_LEN: usize = 4096;

/// The longest announcement parsed: a registration id (32 bytes) and a
/// record. The subscription's connection has received a longer one whole
/// already (Redis pushes it); it is dropped before it is copied or parsed.
pub(crate) const MAX_ANNOUNCEMENT_LEN: usize = 32 + MAX_RECORD_LEN;

/// The record of a registration `owner` holds, with `owner`'s own seal.
pub(crate) fn owner_value(owner: &NodeInfo) -> String {
    record_value(owner, owner.seal.as_deref())
}

/// A record naming `owner`'s id and address, with `seal`.
pub(crate) fn record_value(owner: &NodeInfo, seal: Option<&str>) -> String {
    match seal {
        Some(seal) => format!("{} {} {seal}", owner.id, owner.forward_addr),
        None => format!("{} {}", owner.id, owner.forward_addr),
    }
}

/// The value of a node's heartbeat key: its address, and its heartbeat
/// seal if it has one.
pub(crate) fn beat_value(node: &NodeInfo) -> String {
    match &node.seal {
        Some(seal) => format!("{} {seal}", node.forward_addr),
        None => node.forward_addr.clone(),
    }
}

/// What a `CONNECT` that found no record leaves in its place, naming its
/// node: `? <node id>`. No node id is `?`, and a record always has an
/// address after its id, so no record reads as a waiter.
pub(crate) fn waiter_value(node_id: &str) -> String {
    format!("{WAITER_MARK} {node_id}")
}

/// The first word of a waiter entry.
const WAITER_MARK: &str = "?";

/// The node a waiter entry names, if `value` is one.
pub(crate) fn parse_waiter(value: &str) -> Option<&str> {
    value
        .strip_prefix(WAITER_MARK)?
        .strip_prefix(' ')
        .filter(|id| !id.is_empty() && !id.contains(' '))
}

/// The owner a record names.
pub(crate) fn parse_owner(value: &str) -> Result<NodeInfo, StoreError> {
    let (id, rest) = value
        .split_once(' ')
        .ok_or_else(|| StoreError::Malformed(format!("owner {}", shown(value))))?;
    let (addr, seal) = match rest.split_once(' ') {
        Some((addr, seal)) => (addr, Some(seal.to_owned())),
        None => (rest, None),
    };
    Ok(NodeInfo {
        id: id.to_owned(),
        forward_addr: addr.to_owned(),
        seal,
    })
}

/// An announcement's payload: the id, then the owner as the record names it.
pub(crate) fn announcement(id: &RegistrationId, value: &str) -> Vec<u8> {
    [id.as_bytes(), value.as_bytes()].concat()
}

/// The announcement in a payload, if it is one.
pub(crate) fn parse_announcement(payload: &[u8]) -> Option<Registered> {
    if payload.len() > MAX_ANNOUNCEMENT_LEN {
        return None;
    }
    let (id, value) = payload.split_first_chunk::<32>()?;
    let owner = parse_owner(std::str::from_utf8(value).ok()?).ok()?;
    Some(Registered {
        id: RegistrationId::from_bytes(*id),
        owner: Some(owner),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_carry_the_owner() {
        let id = RegistrationId::of("k", "a@b", "c@d");
        let owner = NodeInfo {
            id: "0b7c".into(),
            forward_addr: "10.0.0.1:7780".into(),
            seal: Some("c2VhbA".into()),
        };
        let payload = announcement(&id, &owner_value(&owner));
        let parsed = parse_announcement(&payload);
        assert_eq!(
            parsed,
            Some(Registered {
                id,
                owner: Some(owner)
            })
        );
        assert_eq!(parse_announcement(&payload[..31]), None, "too short");
        assert_eq!(parse_announcement(id.as_bytes()), None, "no owner");
        let unsealed = parse_owner("0b7c 10.0.0.1:7780").unwrap();
        assert_eq!(unsealed.seal, None);
        let used = owner_value(&NodeInfo::used());
        assert!(parse_owner(&used).unwrap().is_used());
        let mut planted = id.as_bytes().to_vec();
        planted.extend(format!("a {}", "b".repeat(MAX_RECORD_LEN)).bytes());
        assert_eq!(parse_announcement(&planted), None, "oversize");
    }

    #[test]
    fn waiters_are_not_records() {
        let waiter = waiter_value("0b7c");
        assert_eq!(parse_waiter(&waiter), Some("0b7c"));
        let record = owner_value(&parse_owner("0b7c 10.0.0.1:7780").unwrap());
        assert_eq!(parse_waiter(&record), None);
        assert_eq!(parse_waiter(&owner_value(&NodeInfo::used())), None);
        assert_eq!(parse_waiter("? a b"), None, "two words");
    }

    #[test]
    fn a_malformed_record_is_not_quoted_whole() {
        let planted = format!("{}\nforged", "x".repeat(1 << 20));
        let e = parse_owner(&planted).unwrap_err().to_string();
        assert!(e.len() < 200, "{}", e.len());
        assert!(!e.contains('\n'));
    }
}
