//! Property tests of the SOCKS5 codec of XEP-0065 mode: arbitrary bytes never
//! panic the decoders, every strict prefix of a valid message is "need more",
//! and every message that is not valid is refused with a reply code.

use bytes::BytesMut;
use dtcp_wire::socks5::{
    self, Method, ReplyCode, Socks5Error, StreamHash, decode_greeting, decode_request,
};
use proptest::prelude::*;

fn hash() -> impl Strategy<Value = StreamHash> {
    any::<[u8; 20]>().prop_map(StreamHash::from_bytes)
}

fn greeting() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..=255).prop_map(|methods| {
        let mut g = vec![socks5::VERSION, methods.len() as u8];
        g.extend(methods);
        g
    })
}

proptest! {
    #[test]
    fn request_round_trips_with_any_tail(hash in hash(), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut buf = BytesMut::from(&socks5::encode_request(&hash)[..]);
        buf.extend_from_slice(&tail);
        prop_assert_eq!(decode_request(&mut buf), Ok(Some(hash)));
        prop_assert_eq!(&buf[..], &tail[..]);
    }

    #[test]
    fn every_strict_prefix_of_a_request_needs_more(hash in hash(), cut in any::<prop::sample::Index>()) {
        let bytes = socks5::encode_request(&hash);
        let cut = cut.index(bytes.len());
        prop_assert_eq!(decode_request(&mut BytesMut::from(&bytes[..cut])), Ok(None));
    }

    #[test]
    fn every_strict_prefix_of_a_greeting_needs_more(g in greeting(), cut in any::<prop::sample::Index>()) {
        let cut = cut.index(g.len());
        prop_assert_eq!(decode_greeting(&mut BytesMut::from(&g[..cut])), Ok(None));
        let mut buf = BytesMut::from(&g[..]);
        let want = if g[2..].contains(&0) { Method::NoAuth } else { Method::NoneAcceptable };
        prop_assert_eq!(decode_greeting(&mut buf), Ok(Some(want)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn arbitrary_requests_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
        let mut buf = BytesMut::from(&bytes[..]);
        match decode_request(&mut buf) {
            Ok(None) => prop_assert!(bytes.len() < socks5::REQUEST_LEN),
            Ok(Some(hash)) => {
                prop_assert_eq!(&bytes[..socks5::REQUEST_LEN], &socks5::encode_request(&hash)[..]);
                prop_assert_eq!(buf.len(), bytes.len() - socks5::REQUEST_LEN);
            }
            Err(e) => prop_assert!(e.reply().is_some()),
        }
    }

    #[test]
    fn arbitrary_greetings_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode_greeting(&mut BytesMut::from(&bytes[..]));
    }

    /// One byte of a valid request changed: refused, with the code of the field.
    #[test]
    fn a_changed_byte_is_refused_with_its_code(hash in hash(), at in 0..socks5::REQUEST_LEN, to in any::<u8>()) {
        let mut bytes = socks5::encode_request(&hash);
        prop_assume!(bytes[at] != to);
        bytes[at] = to;
        let got = decode_request(&mut BytesMut::from(&bytes[..]));
        let hex = to.is_ascii_digit() || (b'a'..=b'f').contains(&to);
        if (5..45).contains(&at) && hex {
            // Still a valid request, for another hash.
            prop_assert!(matches!(got, Ok(Some(h)) if h != hash));
        } else {
            let code = got.unwrap_err().reply_code();
            let want = match at {
                1 => ReplyCode::CommandNotSupported,
                3 => ReplyCode::AddressTypeNotSupported,
                _ => ReplyCode::GeneralFailure,
            };
            prop_assert_eq!(code, Some(want));
        }
    }
}

#[test]
fn a_greeting_of_another_version_has_no_reply() {
    let err = decode_greeting(&mut BytesMut::from(&b"GET /"[..])).unwrap_err();
    assert_eq!(err, Socks5Error::GreetingVersion(b'G'));
    assert_eq!(err.reply(), None);
}
