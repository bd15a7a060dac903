//! Code mode: one short code such as `417-crossover-detergent-sawdust`
//! instead of a key and two JIDs, and a password-authenticated key
//! exchange that secures the stream (docs/PROTOCOL.md, "Code mode").
//!
//! A code is a number and three words of the PGP word list. It splits in
//! two, as magic-wormhole's codes do:
//!
//! - the **locator**, the number and the first word, finds the session at
//!   the relay: the DTCP key and both JIDs are derived from it alone, so the
//!   relay sees them and learns nothing about the rest;
//! - the whole code is the SPAKE2 **password** ([`pake`]). Its last two
//!   words (16 bits) are the part the relay does not know; SPAKE2 gives an
//!   active attacker exactly one guess per run and a passive one nothing to
//!   test offline.
//!
//! ```
//! use dtcp_client::code::Code;
//!
//! let code = Code::generate();
//! let again: Code = code.to_string().parse().unwrap();
//! assert_eq!(code.triple(), again.triple());
//! ```

pub mod pake;
mod words;

use std::fmt;
use std::str::FromStr;

use dtcp_wire::Triple;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

pub use pake::{PakeError, receiver, sender};

/// The highest number a code starts with.
pub const MAX_NUMBER: u16 = 999;
/// Words after the number: the first locates, all three authenticate.
pub const WORDS: usize = 3;

/// Derivation labels: a code means nothing outside this mode and version.
const LOCATOR_LABEL: &[u8] = b"dtcp code mode v1: locator\0";

/// A parsed code: the number and the index of each word in its list.
#[derive(Clone, PartialEq, Eq)]
pub struct Code {
    number: u16,
    words: [u8; WORDS],
}

/// Why a text is not a code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodeError {
    /// Not `NUMBER-WORD-WORD-WORD`.
    #[error("a code is a number and {WORDS} words, e.g. 417-crossover-detergent-sawdust")]
    Shape,
    /// The number is out of range.
    #[error("a code starts with a number from 1 to {MAX_NUMBER}")]
    Number,
    /// A word is not in the word list (or is in the other list: a word
    /// skipped or swapped).
    #[error("word {place} ({word:?}) is not one a code can have there: check its spelling")]
    Word {
        /// Which word, from 1.
        place: usize,
        /// As typed.
        word: String,
    },
}

impl Code {
    /// A fresh random code.
    pub fn generate() -> Code {
        let mut bytes = [0u8; 2 + WORDS];
        OsRng.fill_bytes(&mut bytes);
        // The modulo bias over 65536 is below 2%: harmless for a locator.
        let number = u16::from_be_bytes([bytes[0], bytes[1]]) % MAX_NUMBER + 1;
        let mut words = [0u8; WORDS];
        words.copy_from_slice(&bytes[2..]);
        Code { number, words }
    }

    /// The word at `place` (from 0): even places take the two-syllable list.
    fn word(&self, place: usize) -> &'static str {
        list(place)[usize::from(self.words[place])]
    }

    /// The part that finds the session at the relay: the number and the
    /// first word.
    fn locator(&self) -> String {
        format!("{}-{}", self.number, self.word(0))
    }

    /// What the relay sees: a key and two JIDs derived from the locator
    /// alone.
    pub fn triple(&self) -> Triple {
        let h = Sha256::new()
            .chain_update(LOCATOR_LABEL)
            .chain_update(self.locator())
            .finalize();
        let key = format!("code-{}", hex::encode(&h[..16]));
        let tag = hex::encode(&h[16..20]);
        Triple::new(
            key,
            format!("send-{tag}@code.dtcp"),
            format!("recv-{tag}@code.dtcp"),
        )
        .expect("a derived key and JIDs are within the default limits")
    }

    /// The SPAKE2 password: the whole code, as both sides spell it.
    pub(crate) fn password(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

fn list(place: usize) -> &'static [&'static str; 256] {
    if place.is_multiple_of(2) {
        &words::EVEN
    } else {
        &words::ODD
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.number)?;
        for place in 0..WORDS {
            write!(f, "-{}", self.word(place))?;
        }
        Ok(())
    }
}

/// Never shows the code: it is a secret.
impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Code(..)")
    }
}

impl FromStr for Code {
    type Err = CodeError;

    /// Parses a code as people type it: any case, surrounding blanks, `-`
    /// or spaces between the parts.
    fn from_str(s: &str) -> Result<Code, CodeError> {
        let parts: Vec<&str> = s
            .split(|c: char| c == '-' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .collect();
        let [number, rest @ ..] = parts.as_slice() else {
            return Err(CodeError::Shape);
        };
        if rest.len() != WORDS {
            return Err(CodeError::Shape);
        }
        let number: u16 = number.parse().map_err(|_| CodeError::Shape)?;
        if !(1..=MAX_NUMBER).contains(&number) {
            return Err(CodeError::Number);
        }
        let mut words = [0u8; WORDS];
        for (place, typed) in rest.iter().enumerate() {
            let lower = typed.to_ascii_lowercase();
            let index = list(place)
                .iter()
                .position(|w| *w == lower)
                .ok_or_else(|| CodeError::Word {
                    place: place + 1,
                    word: (*typed).to_owned(),
                })?;
            words[place] = u8::try_from(index).expect("a list has 256 words");
        }
        Ok(Code { number, words })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_parse_loosely() {
        for _ in 0..200 {
            let code = Code::generate();
            let text = code.to_string();
            assert_eq!(text.parse::<Code>().unwrap(), code);
            let loose = format!("  {}  ", text.to_uppercase().replace('-', " "));
            assert_eq!(loose.parse::<Code>().unwrap(), code);
        }
    }

    #[test]
    fn the_triple_depends_on_the_locator_only() {
        let a: Code = "7-aardvark-adroitness-absurd".parse().unwrap();
        let b: Code = "7-aardvark-adviser-accrue".parse().unwrap();
        let c: Code = "7-absurd-adroitness-absurd".parse().unwrap();
        assert_eq!(a.triple(), b.triple());
        assert_ne!(a.triple(), c.triple());
        assert_ne!(a.password(), b.password());
        assert!(!format!("{:?}", a.triple()).contains("aardvark"));
    }

    #[test]
    fn bad_codes_say_why() {
        assert_eq!("7-aardvark".parse::<Code>(), Err(CodeError::Shape));
        assert_eq!(
            "0-aardvark-adroitness-absurd".parse::<Code>(),
            Err(CodeError::Number)
        );
        // A two-syllable word where a three-syllable one belongs.
        assert!(matches!(
            "7-aardvark-absurd-absurd".parse::<Code>(),
            Err(CodeError::Word { place: 2, .. })
        ));
    }
}
