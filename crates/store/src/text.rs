//! How a value that came from outside (Redis) is shown in an error or a
//! log line: cut short and escaped, so that whoever can write the store
//! can neither fill the logs nor forge lines in them.

/// Characters of a value kept when it is shown: enough to recognise a node
/// id or an address, far less than a record a writer could plant.
pub(crate) const SHOWN_CHARS: usize = 64;

/// `value` as a log may show it: at most [`SHOWN_CHARS`] characters,
/// control characters and quotes escaped (a newline is `\n`), with the
/// full length in bytes when it was cut.
pub(crate) fn shown(value: &str) -> String {
    shown_up_to(value, SHOWN_CHARS)
}

/// Characters of an error's own text kept (a Redis client's error may quote
/// a reply): room for any message of the client or the server.
pub(crate) const SHOWN_ERROR_CHARS: usize = 256;

/// `value` as [`shown`] shows it, with at most `chars` characters.
pub(crate) fn shown_up_to(value: &str, chars: usize) -> String {
    let mut out: String = value
        .chars()
        .take(chars)
        .flat_map(char::escape_debug)
        .collect();
    if value.chars().nth(chars).is_some() {
        out.push_str(&format!("… ({} bytes)", value.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_cut_and_escaped() {
        assert_eq!(shown("node-1 10.0.0.1:7780"), "node-1 10.0.0.1:7780");
        assert_eq!(shown("a\nforged line"), "a\\nforged line");
        let long = "x".repeat(4 << 20);
        let s = shown(&long);
        assert!(s.len() < SHOWN_CHARS + 32, "{}", s.len());
        assert!(s.ends_with("(4194304 bytes)"), "{s}");
    }
}
