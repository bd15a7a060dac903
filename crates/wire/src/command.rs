use std::fmt;

use bytes::BytesMut;

use crate::{Field, Limits, RegistrationId, WireError, check_jid};

/// The command word: which role the connection plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    /// Sent by the Initiator: register a pending session.
    Create,
    /// Sent by the Target: claim the pending session with the same triple.
    Connect,
}

impl Verb {
    /// The word on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Verb::Create => "CREATE",
            Verb::Connect => "CONNECT",
        }
    }

    /// Lowercase, for metric labels and logs.
    pub const fn label(self) -> &'static str {
        match self {
            Verb::Create => "create",
            Verb::Connect => "connect",
        }
    }

    fn from_bytes(b: &[u8]) -> Option<Verb> {
        [Verb::Create, Verb::Connect]
            .into_iter()
            .find(|v| v.as_str().as_bytes() == b)
    }

    /// Whether `b` can still grow into a verb.
    fn could_begin(b: &[u8]) -> bool {
        [Verb::Create, Verb::Connect]
            .iter()
            .any(|v| v.as_str().as_bytes().starts_with(b))
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What both peers present: the key and the two JIDs. Pairing compares triples.
///
/// `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Triple {
    key: String,
    initiator: String,
    target: String,
}

impl Triple {
    /// A triple checked against the default [`Limits`] and the JID shape.
    pub fn new(
        key: impl Into<String>,
        initiator: impl Into<String>,
        target: impl Into<String>,
    ) -> Result<Self, WireError> {
        let triple = Triple {
            key: key.into(),
            initiator: initiator.into(),
            target: target.into(),
        };
        let limits = Limits::default();
        for (field, value) in [
            (Field::Key, &triple.key),
            (Field::Initiator, &triple.initiator),
            (Field::Target, &triple.target),
        ] {
            check_len(field, value.as_bytes(), &limits)?;
            check_field(field, value.as_bytes())?;
        }
        Ok(triple)
    }

    /// The shared secret. Never log it: log [`Triple::registration_id`] instead.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The Initiator's JID.
    pub fn initiator(&self) -> &str {
        &self.initiator
    }

    /// The Target's JID.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The name of this triple's registration.
    pub fn registration_id(&self) -> RegistrationId {
        RegistrationId::of(&self.key, &self.initiator, &self.target)
    }
}

impl fmt::Debug for Triple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Triple")
            .field("key", &"<redacted>")
            .field("initiator", &self.initiator)
            .field("target", &self.target)
            .finish()
    }
}

/// A complete handshake command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// `CREATE` or `CONNECT`.
    pub verb: Verb,
    /// Key and JIDs.
    pub triple: Triple,
}

impl Command {
    /// A command for this triple.
    pub fn new(verb: Verb, triple: Triple) -> Self {
        Command { verb, triple }
    }

    /// The bytes on the wire: `VERB\0key\0initiator\0target\0`.
    pub fn encode(&self) -> Vec<u8> {
        let t = &self.triple;
        let mut out = Vec::with_capacity(
            self.verb.as_str().len() + t.key.len() + t.initiator.len() + t.target.len() + 4,
        );
        for field in [self.verb.as_str(), &t.key, &t.initiator, &t.target] {
            out.extend_from_slice(field.as_bytes());
            out.push(0);
        }
        out
    }
}

/// Incremental decoder of one command.
///
/// Call [`CommandDecoder::decode`] each time more bytes arrive. It remembers
/// how far it has looked, so a client that sends one byte at a time costs
/// linear work, not quadratic, and it checks every field as soon as the field
/// is complete (or has grown past its limit), so bad input is refused at the
/// earliest byte that proves it bad.
#[derive(Debug, Clone)]
pub struct CommandDecoder {
    limits: Limits,
    /// Offset of the NUL that ends each field found so far.
    ends: [usize; 4],
    /// How many fields are complete.
    complete: usize,
    /// How far the buffer has been searched for the next NUL.
    scanned: usize,
}

impl CommandDecoder {
    /// A decoder enforcing these limits.
    pub fn new(limits: Limits) -> Self {
        CommandDecoder {
            limits,
            ends: [0; 4],
            complete: 0,
            scanned: 0,
        }
    }

    /// Looks at the bytes read so far.
    ///
    /// - `Ok(None)`: the bytes so far can still become a valid command; read more.
    /// - `Ok(Some(command))`: the command's bytes are removed from `buf`; what
    ///   the client sent behind it stays there.
    /// - `Err(_)`: these bytes can never become a valid command.
    ///
    /// `buf` must only grow between calls until a command or an error is returned.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Command>, WireError> {
        while self.complete < 4 {
            let field = Field::ORDER[self.complete];
            let start = self.field_start();
            match buf[self.scanned..].iter().position(|&b| b == 0) {
                Some(pos) => {
                    let end = self.scanned + pos;
                    if end >= self.limits.max_command_len {
                        return Err(WireError::CommandTooLong(self.limits.max_command_len));
                    }
                    let bytes = &buf[start..end];
                    if field == Field::Verb {
                        if Verb::from_bytes(bytes).is_none() {
                            return Err(WireError::UnknownCommand);
                        }
                    } else {
                        check_len(field, bytes, &self.limits)?;
                        check_field(field, bytes)?;
                    }
                    self.ends[self.complete] = end;
                    self.complete += 1;
                    self.scanned = end + 1;
                }
                None => {
                    self.scanned = buf.len();
                    let partial = &buf[start..];
                    if field == Field::Verb {
                        if !Verb::could_begin(partial) {
                            return Err(WireError::UnknownCommand);
                        }
                    } else {
                        check_len(field, partial, &self.limits)?;
                    }
                    // A complete command needs at least one more byte (the NUL).
                    if buf.len() >= self.limits.max_command_len {
                        return Err(WireError::CommandTooLong(self.limits.max_command_len));
                    }
                    return Ok(None);
                }
            }
        }

        let raw = buf.split_to(self.ends[3] + 1);
        let text = |i: usize| {
            let start = if i == 0 { 0 } else { self.ends[i - 1] + 1 };
            // Checked as UTF-8 when the field completed.
            String::from_utf8(raw[start..self.ends[i]].to_vec()).expect("checked UTF-8")
        };
        let verb = Verb::from_bytes(&raw[..self.ends[0]]).expect("checked verb");
        let command = Command {
            verb,
            triple: Triple {
                key: text(1),
                initiator: text(2),
                target: text(3),
            },
        };
        *self = CommandDecoder::new(self.limits);
        Ok(Some(command))
    }

    fn field_start(&self) -> usize {
        match self.complete {
            0 => 0,
            n => self.ends[n - 1] + 1,
        }
    }
}

/// Length limits of a (possibly partial) field other than the verb.
fn check_len(field: Field, bytes: &[u8], limits: &Limits) -> Result<(), WireError> {
    let max = match field {
        Field::Key => limits.max_key_len,
        _ => limits.max_jid_len,
    };
    if bytes.len() > max {
        return Err(WireError::FieldTooLong { field, max });
    }
    Ok(())
}

/// Content checks of a complete field other than the verb.
fn check_field(field: Field, bytes: &[u8]) -> Result<(), WireError> {
    if bytes.is_empty() {
        return Err(WireError::EmptyField(field));
    }
    if bytes.contains(&0) {
        // Only reachable through `Triple::new`: on the wire NUL ends the field.
        return Err(WireError::NotUtf8(field));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| WireError::NotUtf8(field))?;
    if field != Field::Key {
        check_jid(text).map_err(|error| WireError::BadJid { field, error })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::JidError;

    fn decode_all(bytes: &[u8]) -> Result<Option<Command>, WireError> {
        CommandDecoder::new(Limits::default()).decode(&mut BytesMut::from(bytes))
    }

    fn triple() -> Triple {
        Triple::new("s3cret", "romeo@montague.lit/orchard", "juliet@capulet.lit").unwrap()
    }

    #[test]
    fn decodes_create_and_connect() {
        for verb in [Verb::Create, Verb::Connect] {
            let bytes = Command::new(verb, triple()).encode();
            let cmd = decode_all(&bytes).unwrap().unwrap();
            assert_eq!(cmd.verb, verb);
            assert_eq!(cmd.triple, triple());
            assert_eq!(cmd.triple.key(), "s3cret");
        }
        assert_eq!(
            Command::new(Verb::Create, triple()).encode(),
            b"CREATE\0s3cret\0romeo@montague.lit/orchard\0juliet@capulet.lit\0"
        );
    }

    #[test]
    fn leaves_pipelined_bytes_in_the_buffer() {
        let mut buf = BytesMut::from(&Command::new(Verb::Connect, triple()).encode()[..]);
        buf.extend_from_slice(b"\0\0hello");
        let cmd = CommandDecoder::new(Limits::default())
            .decode(&mut buf)
            .unwrap();
        assert!(cmd.is_some());
        assert_eq!(&buf[..], b"\0\0hello");
    }

    #[test]
    fn byte_at_a_time_is_incomplete_until_the_last_nul() {
        let bytes = Command::new(Verb::Create, triple()).encode();
        let mut dec = CommandDecoder::new(Limits::default());
        let mut buf = BytesMut::new();
        for (i, b) in bytes.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let got = dec.decode(&mut buf).unwrap();
            assert_eq!(got.is_some(), i == bytes.len() - 1, "at byte {i}");
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_what_cannot_begin_a_command_at_once() {
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x03\x01\x02\x00",
            b"X",
            b"CREATEX",
            b"CONNECTED\0",
            b"create\0",
            b"\0",
        ] {
            assert_eq!(decode_all(bad), Err(WireError::UnknownCommand), "{bad:?}");
        }
        for prefix in [&b""[..], b"C", b"CR", b"CREATE", b"CON", b"CONNECT"] {
            assert_eq!(decode_all(prefix), Ok(None), "{prefix:?}");
        }
    }

    #[test]
    fn refuses_empty_fields() {
        assert_eq!(
            decode_all(b"CREATE\0\0"),
            Err(WireError::EmptyField(Field::Key))
        );
        assert_eq!(
            decode_all(b"CREATE\0k\0\0"),
            Err(WireError::EmptyField(Field::Initiator))
        );
        assert_eq!(
            decode_all(b"CONNECT\0k\0a@b\0\0"),
            Err(WireError::EmptyField(Field::Target))
        );
    }

    #[test]
    fn refuses_non_utf8_and_bad_jids() {
        assert_eq!(
            decode_all(b"CREATE\0\xff\xfe\0"),
            Err(WireError::NotUtf8(Field::Key))
        );
        assert_eq!(
            decode_all(b"CREATE\0k\0a@\xc3\0"),
            Err(WireError::NotUtf8(Field::Initiator))
        );
        assert_eq!(
            decode_all(b"CREATE\0k\0a@b\0@c\0"),
            Err(WireError::BadJid {
                field: Field::Target,
                error: JidError::EmptyLocalpart
            })
        );
    }

    #[test]
    fn refuses_long_fields_before_they_end() {
        let mut long_key = b"CREATE\0".to_vec();
        long_key.extend(std::iter::repeat_n(b'k', 257));
        assert_eq!(
            decode_all(&long_key),
            Err(WireError::FieldTooLong {
                field: Field::Key,
                max: 256
            })
        );
        let mut ok_key = b"CREATE\0".to_vec();
        ok_key.extend(std::iter::repeat_n(b'k', 256));
        assert_eq!(decode_all(&ok_key), Ok(None));

        let mut long_jid = b"CREATE\0k\0".to_vec();
        long_jid.extend(std::iter::repeat_n(b'j', 3072));
        assert_eq!(
            decode_all(&long_jid),
            Err(WireError::FieldTooLong {
                field: Field::Initiator,
                max: 3071
            })
        );
    }

    #[test]
    fn refuses_a_command_over_the_total_limit() {
        let limits = Limits {
            max_command_len: 40,
            ..Limits::default()
        };
        let cmd = Command::new(Verb::Create, triple()).encode();
        assert!(cmd.len() > 40);
        let mut buf = BytesMut::from(&cmd[..]);
        assert_eq!(
            CommandDecoder::new(limits).decode(&mut buf),
            Err(WireError::CommandTooLong(40))
        );
        // Exactly at the limit is fine.
        let limits = Limits {
            max_command_len: cmd.len(),
            ..Limits::default()
        };
        let mut buf = BytesMut::from(&cmd[..]);
        assert!(
            CommandDecoder::new(limits)
                .decode(&mut buf)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn triple_new_checks_like_the_decoder() {
        assert!(Triple::new("", "a@b", "c@d").is_err());
        assert!(Triple::new("k", "a@b", "c@").is_err());
        assert!(Triple::new("k\0", "a@b", "c@d").is_err());
        assert!(Triple::new("k".repeat(257), "a@b", "c@d").is_err());
        assert!(!format!("{:?}", triple()).contains("s3cret"));
    }
}
