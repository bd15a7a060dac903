//! Property tests of the handshake codec: encode/decode round trips, and that
//! arbitrary bytes never panic the decoder and always end in a command, "need
//! more" or `bad-request`.

use bytes::BytesMut;
use dtcp_wire::{Command, CommandDecoder, Condition, Limits, Reply, Triple, Verb, decode_reply};
use proptest::prelude::*;

fn jid() -> impl Strategy<Value = String> {
    (
        proptest::option::of("[a-z0-9._-]{1,20}"),
        "[a-z0-9-]{1,20}(\\.[a-z]{2,5})?",
        proptest::option::of("[^\\x00-\\x1f\\x7f-\\x9f]{1,20}"),
    )
        .prop_map(|(local, domain, resource)| {
            let mut jid = String::new();
            if let Some(l) = local {
                jid.push_str(&l);
                jid.push('@');
            }
            jid.push_str(&domain);
            if let Some(r) = resource {
                jid.push('/');
                jid.push_str(&r);
            }
            jid
        })
}

fn triple() -> impl Strategy<Value = Triple> {
    ("[^\\x00]{1,64}", jid(), jid()).prop_map(|(k, i, t)| Triple::new(k, i, t).expect("valid"))
}

fn verb() -> impl Strategy<Value = Verb> {
    prop_oneof![Just(Verb::Create), Just(Verb::Connect)]
}

proptest! {
    #[test]
    fn command_round_trips(verb in verb(), triple in triple(), tail in proptest::collection::vec(any::<u8>(), 0..32)) {
        let cmd = Command::new(verb, triple);
        let mut buf = BytesMut::from(&cmd.encode()[..]);
        buf.extend_from_slice(&tail);
        let got = CommandDecoder::new(Limits::default()).decode(&mut buf).unwrap();
        prop_assert_eq!(got, Some(cmd));
        prop_assert_eq!(&buf[..], &tail[..]);
    }

    #[test]
    fn command_round_trips_in_any_split(verb in verb(), triple in triple(), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6)) {
        let cmd = Command::new(verb, triple);
        let bytes = cmd.encode();
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len())).collect();
        points.push(bytes.len());
        points.sort_unstable();
        let mut dec = CommandDecoder::new(Limits::default());
        let mut buf = BytesMut::new();
        let mut from = 0;
        let mut got = None;
        for p in points {
            buf.extend_from_slice(&bytes[from..p]);
            from = p;
            if let Some(c) = dec.decode(&mut buf).unwrap() {
                got = Some(c);
            }
        }
        prop_assert_eq!(got, Some(cmd));
    }

    #[test]
    fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..8)) {
        let mut dec = CommandDecoder::new(Limits::default());
        let mut buf = BytesMut::new();
        for chunk in chunks {
            buf.extend_from_slice(&chunk);
            match dec.decode(&mut buf) {
                Ok(None) => continue,
                Ok(Some(_)) => break,
                Err(e) => {
                    prop_assert_eq!(e.condition(), Condition::BadRequest);
                    break;
                }
            }
        }
    }

    #[test]
    fn near_commands_never_panic(prefix in prop_oneof![Just(&b"CREATE\0"[..]), Just(&b"CONNECT\0"[..])],
                                 body in proptest::collection::vec(prop_oneof![Just(0u8), any::<u8>(), Just(b'@'), Just(b'/')], 0..300)) {
        let mut buf = BytesMut::from(prefix);
        buf.extend_from_slice(&body);
        let limits = Limits { max_command_len: 128, max_key_len: 16, max_jid_len: 64 };
        match CommandDecoder::new(limits).decode(&mut buf) {
            Ok(_) => {}
            Err(e) => prop_assert_eq!(e.condition(), Condition::BadRequest),
        }
    }

    #[test]
    fn reply_round_trips(cond in proptest::sample::select(Condition::ALL.to_vec()), text in "[^\\x00]{0,200}") {
        for reply in [Reply::Ok, Reply::error(cond, text.clone())] {
            let mut buf = BytesMut::from(&reply.to_vec()[..]);
            prop_assert_eq!(decode_reply(&mut buf).unwrap(), Some(reply));
            prop_assert!(buf.is_empty());
        }
    }

    #[test]
    fn arbitrary_replies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode_reply(&mut BytesMut::from(&bytes[..]));
    }
}
