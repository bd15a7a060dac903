use std::fmt;

use crate::MAX_JID_PART_LEN;

/// Why a string is not shaped as an RFC 7622 JID, `[localpart@]domainpart[/resourcepart]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JidError {
    /// `@domain`: the localpart is present but empty.
    #[error("empty localpart")]
    EmptyLocalpart,
    /// No domainpart.
    #[error("empty domainpart")]
    EmptyDomainpart,
    /// `domain/`: the resourcepart is present but empty.
    #[error("empty resourcepart")]
    EmptyResourcepart,
    /// A part is longer than 1023 bytes.
    #[error("{0} longer than 1023 bytes")]
    PartTooLong(Part),
    /// A character that the part may not hold (RFC 7622 forbids `"&'/:<>@` and
    /// spaces in a localpart, and control characters anywhere).
    #[error("forbidden character in {0}")]
    ForbiddenChar(Part),
}

/// A part of a JID, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Before the `@`.
    Localpart,
    /// Between the `@` and the `/`.
    Domainpart,
    /// After the `/`.
    Resourcepart,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Localpart => "localpart",
            Part::Domainpart => "domainpart",
            Part::Resourcepart => "resourcepart",
        })
    }
}

/// Checks the shape of a JID (RFC 7622, section 3.1): an optional localpart
/// ending in `@`, a required domainpart, an optional resourcepart after `/`,
/// each within 1023 bytes.
///
/// This is a shape check, not full PRECIS enforcement: the relay only needs to
/// refuse what cannot be a JID, not to canonicalise it (both peers present the
/// same bytes, and pairing compares bytes).
pub fn check_jid(jid: &str) -> Result<(), JidError> {
    // The resourcepart may contain '@' and '/', so split it off first.
    let (bare, resource) = match jid.split_once('/') {
        Some((bare, resource)) => (bare, Some(resource)),
        None => (jid, None),
    };
    let (local, domain) = match bare.split_once('@') {
        Some((local, domain)) => (Some(local), domain),
        None => (None, bare),
    };
    if let Some(local) = local {
        check_part(local, Part::Localpart, JidError::EmptyLocalpart, |c| {
            matches!(c, '"' | '&' | '\'' | '/' | ':' | '<' | '>' | '@') || c.is_whitespace()
        })?;
    }
    check_part(domain, Part::Domainpart, JidError::EmptyDomainpart, |c| {
        c == '@' || c.is_whitespace()
    })?;
    if let Some(resource) = resource {
        check_part(
            resource,
            Part::Resourcepart,
            JidError::EmptyResourcepart,
            |_| false,
        )?;
    }
    Ok(())
}

/// The domainpart of a JID that passed [`check_jid`].
pub fn domainpart(jid: &str) -> &str {
    let bare = jid.split_once('/').map_or(jid, |(bare, _)| bare);
    bare.split_once('@').map_or(bare, |(_, domain)| domain)
}

fn check_part(
    part: &str,
    which: Part,
    empty: JidError,
    forbidden: impl Fn(char) -> bool,
) -> Result<(), JidError> {
    if part.is_empty() {
        return Err(empty);
    }
    if part.len() > MAX_JID_PART_LEN {
        return Err(JidError::PartTooLong(which));
    }
    if part.chars().any(|c| c.is_control() || forbidden(c)) {
        return Err(JidError::ForbiddenChar(which));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_three_shapes() {
        for ok in [
            "capulet.lit",
            "juliet@capulet.lit",
            "juliet@capulet.lit/balcony",
            "capulet.lit/service",
            "juliet@capulet.lit/res@with/slashes",
            "ñoño@例え.jp/☃",
        ] {
            assert_eq!(check_jid(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn finds_the_domainpart() {
        assert_eq!(domainpart("capulet.lit"), "capulet.lit");
        assert_eq!(domainpart("juliet@capulet.lit/balcony"), "capulet.lit");
        assert_eq!(domainpart("capulet.lit/a@b"), "capulet.lit");
    }

    #[test]
    fn refuses_malformed() {
        let long = "a".repeat(MAX_JID_PART_LEN + 1);
        let cases = [
            ("", JidError::EmptyDomainpart),
            ("@capulet.lit", JidError::EmptyLocalpart),
            ("juliet@", JidError::EmptyDomainpart),
            ("juliet@capulet.lit/", JidError::EmptyResourcepart),
            ("/res", JidError::EmptyDomainpart),
            ("a@b@c", JidError::ForbiddenChar(Part::Domainpart)),
            ("ju liet@c", JidError::ForbiddenChar(Part::Localpart)),
            ("ju:liet@c", JidError::ForbiddenChar(Part::Localpart)),
            ("j@cap ulet", JidError::ForbiddenChar(Part::Domainpart)),
            ("j@c/\u{7}", JidError::ForbiddenChar(Part::Resourcepart)),
        ];
        for (jid, err) in cases {
            assert_eq!(check_jid(jid), Err(err), "{jid:?}");
        }
        assert_eq!(
            check_jid(&format!("{long}@c")),
            Err(JidError::PartTooLong(Part::Localpart))
        );
        assert_eq!(
            check_jid(&format!("j@{long}")),
            Err(JidError::PartTooLong(Part::Domainpart))
        );
        assert_eq!(
            check_jid(&format!("j@c/{long}")),
            Err(JidError::PartTooLong(Part::Resourcepart))
        );
    }
}
