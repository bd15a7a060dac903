/// RFC 7622: each of localpart, domainpart and resourcepart is at most 1023 bytes.
pub const MAX_JID_PART_LEN: usize = 1023;

/// Size limits of a command (docs/PROTOCOL.md, "Limits"). Every field is configurable
/// on the relay; the defaults are the protocol's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest key, in bytes (the shortest is 1).
    pub max_key_len: usize,
    /// Longest JID, in bytes, each part also within [`MAX_JID_PART_LEN`].
    pub max_jid_len: usize,
    /// Longest whole command, NUL terminators included.
    pub max_command_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_len: 256,
            max_jid_len: 3071,
            max_command_len: 8192,
        }
    }
}
