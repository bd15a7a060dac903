use std::fmt;
use std::str::FromStr;

/// Why the relay refused a command: the `<condition>` field of an `ERROR` reply.
///
/// The names follow XMPP's stanza error conditions (docs/PROTOCOL.md, "Error conditions").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Condition {
    /// Unknown command, missing or empty field, not UTF-8, too long, malformed JID.
    BadRequest,
    /// A `CREATE` with the same triple is already pending.
    Conflict,
    /// No pending `CREATE` matched within the connect grace, or it was already claimed.
    NotFound,
    /// The command was not complete in time, or the `CREATE` was not claimed in time.
    Timeout,
    /// Refused by policy.
    Forbidden,
    /// A connection, registration or per-address limit was reached.
    ResourceConstraint,
    /// The cluster could not complete the pairing.
    Unavailable,
    /// The node is draining and takes no new sessions.
    ShuttingDown,
}

impl Condition {
    /// Every condition, in the order of docs/PROTOCOL.md's table.
    pub const ALL: [Condition; 8] = [
        Condition::BadRequest,
        Condition::Conflict,
        Condition::NotFound,
        Condition::Timeout,
        Condition::Forbidden,
        Condition::ResourceConstraint,
        Condition::Unavailable,
        Condition::ShuttingDown,
    ];

    /// The name on the wire, e.g. `bad-request`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Condition::BadRequest => "bad-request",
            Condition::Conflict => "conflict",
            Condition::NotFound => "not-found",
            Condition::Timeout => "timeout",
            Condition::Forbidden => "forbidden",
            Condition::ResourceConstraint => "resource-constraint",
            Condition::Unavailable => "unavailable",
            Condition::ShuttingDown => "shutting-down",
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A condition name that docs/PROTOCOL.md does not define.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown error condition {0:?}")]
pub struct UnknownCondition(pub String);

impl FromStr for Condition {
    type Err = UnknownCondition;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Condition::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownCondition(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in Condition::ALL {
            assert_eq!(c.as_str().parse::<Condition>(), Ok(c));
        }
        assert!("teapot".parse::<Condition>().is_err());
    }
}
