use bytes::{BufMut, BytesMut};

use crate::{Condition, WireError};

/// The longest reply a client accepts: the relay's texts are short.
pub const MAX_REPLY_LEN: usize = 1024;

/// The bytes of the `OK` reply: paired (and, in end-to-end TLS, the
/// Initiator's answer to `STARTTLS`).
pub const OK: &[u8] = b"OK\0";

/// The first field of an `ERROR` reply.
const ERROR: &[u8] = b"ERROR\0";

/// The relay's answer to a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `OK\0`: paired; from the next byte on, the stream is the peer's.
    Ok,
    /// `ERROR\0<condition>\0<text>\0`: refused; the relay closes the connection.
    Error {
        /// Machine-readable reason.
        condition: Condition,
        /// Human-readable explanation; clients must not parse it.
        text: String,
    },
}

impl Reply {
    /// An `ERROR` reply.
    pub fn error(condition: Condition, text: impl Into<String>) -> Self {
        Reply::Error {
            condition,
            text: text.into(),
        }
    }

    /// Appends the reply's bytes to `dst`. A NUL in the text (which would end
    /// the field early) is written as a space.
    pub fn encode(&self, dst: &mut impl BufMut) {
        match self {
            Reply::Ok => dst.put_slice(OK),
            Reply::Error { condition, text } => {
                dst.put_slice(ERROR);
                dst.put_slice(condition.as_str().as_bytes());
                dst.put_u8(0);
                for chunk in text.as_bytes().split(|&b| b == 0).enumerate() {
                    if chunk.0 > 0 {
                        dst.put_u8(b' ');
                    }
                    dst.put_slice(chunk.1);
                }
                dst.put_u8(0);
            }
        }
    }

    /// The reply's bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }
}

/// Decodes the relay's reply from the start of `buf`, removing its bytes.
///
/// `Ok(None)` means "read more". Anything that is not a reply, an unknown
/// condition, or a reply longer than [`MAX_REPLY_LEN`] is an error.
pub fn decode_reply(buf: &mut BytesMut) -> Result<Option<Reply>, WireError> {
    if buf.starts_with(OK) {
        let _ = buf.split_to(OK.len());
        return Ok(Some(Reply::Ok));
    }
    if OK.starts_with(buf) || ERROR.starts_with(buf) {
        return Ok(None);
    }
    if !buf.starts_with(ERROR) {
        return Err(WireError::MalformedReply);
    }
    let rest = &buf[ERROR.len()..];
    let mut nuls = rest
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == 0)
        .map(|(i, _)| i);
    let (Some(cond_end), Some(text_end)) = (nuls.next(), nuls.next()) else {
        if buf.len() > MAX_REPLY_LEN {
            return Err(WireError::MalformedReply);
        }
        return Ok(None);
    };
    if ERROR.len() + text_end + 1 > MAX_REPLY_LEN {
        return Err(WireError::MalformedReply);
    }
    let condition = std::str::from_utf8(&rest[..cond_end])
        .ok()
        .and_then(|c| c.parse::<Condition>().ok())
        .ok_or(WireError::MalformedReply)?;
    let text = String::from_utf8_lossy(&rest[cond_end + 1..text_end]).into_owned();
    let _ = buf.split_to(ERROR.len() + text_end + 1);
    Ok(Some(Reply::Error { condition, text }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_decodes_every_reply() {
        let mut replies = vec![Reply::Ok];
        replies.extend(Condition::ALL.map(|c| Reply::error(c, format!("because {c}"))));
        for reply in replies {
            let bytes = reply.to_vec();
            // Every strict prefix is "need more".
            for cut in 0..bytes.len() {
                let mut buf = BytesMut::from(&bytes[..cut]);
                assert_eq!(decode_reply(&mut buf), Ok(None), "{reply:?} cut at {cut}");
            }
            let mut buf = BytesMut::from(&bytes[..]);
            buf.extend_from_slice(b"peer bytes");
            assert_eq!(decode_reply(&mut buf), Ok(Some(reply)));
            assert_eq!(&buf[..], b"peer bytes");
        }
        assert_eq!(
            Reply::error(Condition::NotFound, "no such session").to_vec(),
            b"ERROR\0not-found\0no such session\0"
        );
    }

    #[test]
    fn nul_in_text_is_escaped() {
        let bytes = Reply::error(Condition::Timeout, "a\0b").to_vec();
        assert_eq!(bytes, b"ERROR\0timeout\0a b\0");
    }

    #[test]
    fn refuses_malformed_replies() {
        for bad in [
            &b"NO\0"[..],
            b"OK!",
            b"ERROR\0teapot\0short and stout\0",
            b"HTTP/1.1 400 Bad Request\r\n",
        ] {
            assert_eq!(
                decode_reply(&mut BytesMut::from(bad)),
                Err(WireError::MalformedReply),
                "{bad:?}"
            );
        }
        let mut long = b"ERROR\0timeout\0".to_vec();
        long.extend(std::iter::repeat_n(b'x', MAX_REPLY_LEN));
        assert_eq!(
            decode_reply(&mut BytesMut::from(&long[..])),
            Err(WireError::MalformedReply)
        );
    }
}
