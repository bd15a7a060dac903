//! The values the store writes into Redis and reads back: a registration's
//! record, a heartbeat, an announcement.

use dtcp_wire::RegistrationId;

use crate::rendezvous::{NodeInfo, Registered, StoreError};

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

/// The owner a record names.
pub(crate) fn parse_owner(value: &str) -> Result<NodeInfo, StoreError> {
    let (id, rest) = value
        .split_once(' ')
        .ok_or_else(|| StoreError::Malformed(format!("owner {value:?}")))?;
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
    let (id, value) = payload.split_first_chunk::<32>()?;
    let owner = parse_owner(std::str::from_utf8(value).ok()?).ok()?;
    Some(Registered {
        id: RegistrationId::from_bytes(*id),
        owner,
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
        assert_eq!(parsed, Some(Registered { id, owner }));
        assert_eq!(parse_announcement(&payload[..31]), None, "too short");
        assert_eq!(parse_announcement(id.as_bytes()), None, "no owner");
        let unsealed = parse_owner("0b7c 10.0.0.1:7780").unwrap();
        assert_eq!(unsealed.seal, None);
        let used = owner_value(&NodeInfo::used());
        assert!(parse_owner(&used).unwrap().is_used());
    }
}
