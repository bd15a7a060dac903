//! Candidate lists: where a Target may find its Initiator, as text one side
//! can hand the other out of band.
//!
//! # The form
//!
//! ```text
//! dtcp://CANDIDATE[,CANDIDATE...]
//! CANDIDATE = [relay@]HOST:PORT
//! HOST      = an IPv4 address | [an IPv6 address] | a DNS name
//! ```
//!
//! The candidates are tried in the order written: the Initiator's own
//! listeners first, a relay last. `relay@` marks a relay: the Target sends
//! the same `CONNECT` to every candidate, so the mark only tells the Target
//! which path it ended up on (for its progress line) and gives a relay the
//! longer reply timeout its connect grace needs. For example:
//!
//! ```text
//! dtcp://192.168.1.5:7001,[2001:db8::5]:7001,relay@relay.example.org:7777
//! ```
//!
//! Each candidate is parsed as the authority of a URL by the [`url`] crate
//! (WHATWG URL Standard): the port is required (and not 0), an IPv6 address
//! is in brackets, a name goes through IDNA (`bücher.example` becomes
//! `xn--bcher-kva.example`) and is lowercased; no path, query, fragment or
//! password may follow. An IPv4 address must be four decimal parts (the URL
//! Standard would read `192.168.1` or `0x7f.1` as addresses; here they are
//! errors). IPv6 zone identifiers (`fe80::1%eth0`) are not supported.
//! Spaces around a candidate are ignored, so a list pasted with `, ` works.
//!
//! ```
//! use dtcp_client::{Candidates, Role};
//!
//! let list: Candidates = "dtcp://192.168.1.5:7001,[2001:db8::5]:7001,relay@relay.example.org:7777"
//!     .parse()?;
//! assert_eq!(list.len(), 3);
//! assert_eq!(list[0].role(), Role::Direct);
//! assert_eq!(list[2].role(), Role::Relay);
//! assert_eq!(list[2].to_string(), "relay@relay.example.org:7777");
//! // Display gives the same form back.
//! assert_eq!(list.to_string().parse::<Candidates>()?, list);
//!
//! let err = "dtcp://192.168.1.5,relay@relay.example.org:7777".parse::<Candidates>().unwrap_err();
//! assert_eq!(err.to_string(), "candidate 1 (\"192.168.1.5\"): a port is required (HOST:PORT)");
//! # Ok::<(), dtcp_client::CandidateError>(())
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Deref;
use std::str::FromStr;

use url::Url;

/// What every candidate list starts with.
pub const SCHEME: &str = "dtcp://";

/// The mark of a relay candidate (the URL's user name).
const RELAY_TAG: &str = "relay";

/// Whom a candidate reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// One of the Initiator's own listeners.
    Direct,
    /// A relay where the Initiator registered with `CREATE`.
    Relay,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Direct => "direct",
            Role::Relay => "relay",
        })
    }
}

/// A candidate's host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
    /// A DNS name, lowercase ASCII (IDNA applied), resolved when tried.
    Name(String),
}

/// One address to try.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Candidate {
    host: Host,
    port: u16,
    role: Role,
}

impl Candidate {
    /// One of the Initiator's listeners.
    pub fn direct(addr: SocketAddr) -> Self {
        Candidate {
            host: Host::Ip(addr.ip()),
            port: addr.port(),
            role: Role::Direct,
        }
    }

    /// A relay, from `HOST:PORT` (with or without `relay@`).
    pub fn relay(addr: &str) -> Result<Self, CandidateError> {
        let mut c = Candidate::from_str(addr)?;
        c.role = Role::Relay;
        Ok(c)
    }

    /// The host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Direct or relay.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The socket address, when the host is an address (not a name).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self.host {
            Host::Ip(ip) => Some(SocketAddr::new(ip, self.port)),
            Host::Name(_) => None,
        }
    }

    /// The candidate without its `relay@` mark: what to connect to.
    pub fn address(&self) -> String {
        match &self.host {
            Host::Ip(ip) => SocketAddr::new(*ip, self.port).to_string(),
            Host::Name(name) => format!("{name}:{}", self.port),
        }
    }

    fn parse(item: &str) -> Result<Self, Invalid> {
        if item.is_empty() {
            return Err(Invalid::Empty);
        }
        let url = Url::parse(&format!("{SCHEME}{item}")).map_err(Invalid::Syntax)?;
        if !url.path().is_empty() || url.query().is_some() || url.fragment().is_some() {
            return Err(Invalid::Trailing);
        }
        if url.password().is_some() {
            return Err(Invalid::Tag(format!("{}:…", url.username())));
        }
        let role = match url.username() {
            "" => Role::Direct,
            RELAY_TAG => Role::Relay,
            other => return Err(Invalid::Tag(other.to_owned())),
        };
        let port = match url.port() {
            None => return Err(Invalid::NoPort),
            Some(0) => return Err(Invalid::PortZero),
            Some(p) => p,
        };
        let host = match url.host() {
            None => return Err(Invalid::Syntax(url::ParseError::EmptyHost)),
            Some(url::Host::Ipv6(a)) => Host::Ip(a.into()),
            Some(url::Host::Ipv4(a)) => Host::Ip(a.into()),
            // A URL of a scheme the standard does not know keeps its host
            // opaque: read it as a special URL's host would be read.
            Some(url::Host::Domain(opaque)) => match url::Host::parse(opaque) {
                Ok(url::Host::Domain(name)) => Host::Name(name),
                Ok(url::Host::Ipv4(a)) if opaque.parse::<Ipv4Addr>() == Ok(a) => Host::Ip(a.into()),
                Ok(url::Host::Ipv4(_)) => return Err(Invalid::LooseIpv4),
                Ok(url::Host::Ipv6(a)) => Host::Ip(a.into()),
                Err(e) => return Err(Invalid::Syntax(e)),
            },
        };
        Ok(Candidate { host, port, role })
    }
}

impl FromStr for Candidate {
    type Err = CandidateError;

    /// One candidate, `[relay@]HOST:PORT`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Candidate::parse(s).map_err(|reason| CandidateError::Invalid {
            index: 1,
            text: s.to_owned(),
            reason,
        })
    }
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.role == Role::Relay {
            write!(f, "{RELAY_TAG}@")?;
        }
        f.write_str(&self.address())
    }
}

/// An ordered list of candidates: `dtcp://A,B,relay@C`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Candidates(Vec<Candidate>);

impl Candidates {
    /// A list of these, in this order.
    pub fn new(list: Vec<Candidate>) -> Self {
        Candidates(list)
    }

    /// Adds a candidate at the end. If the same address is already there it
    /// stays in its place, marked as a relay if `candidate` is one.
    pub fn push(&mut self, candidate: Candidate) {
        match self
            .0
            .iter_mut()
            .find(|c| c.host == candidate.host && c.port == candidate.port)
        {
            Some(c) if candidate.role == Role::Relay => c.role = Role::Relay,
            Some(_) => {}
            None => self.0.push(candidate),
        }
    }

    /// The candidates.
    pub fn into_vec(self) -> Vec<Candidate> {
        self.0
    }
}

impl Deref for Candidates {
    type Target = [Candidate];

    fn deref(&self) -> &[Candidate] {
        &self.0
    }
}

impl FromStr for Candidates {
    type Err = CandidateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let list = s
            .get(..SCHEME.len())
            .filter(|p| p.eq_ignore_ascii_case(SCHEME))
            .map(|_| &s[SCHEME.len()..])
            .ok_or(CandidateError::Scheme)?;
        if list.trim().is_empty() {
            return Err(CandidateError::Empty);
        }
        list.split(',')
            .enumerate()
            .map(|(i, item)| {
                let item = item.trim();
                Candidate::parse(item).map_err(|reason| CandidateError::Invalid {
                    index: i + 1,
                    text: item.to_owned(),
                    reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Candidates)
    }
}

impl fmt::Display for Candidates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SCHEME)?;
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

/// A candidate list that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CandidateError {
    /// The text does not start with `dtcp://`.
    #[error(
        "a candidate list starts with {SCHEME} (e.g. {SCHEME}192.168.1.5:7001,relay@relay.example.org:7777)"
    )]
    Scheme,
    /// Nothing after `dtcp://`.
    #[error("the candidate list is empty")]
    Empty,
    /// One candidate is malformed.
    #[error("candidate {index} ({text:?}): {reason}")]
    Invalid {
        /// Its place in the list, from 1.
        index: usize,
        /// Its text.
        text: String,
        /// What is wrong with it.
        reason: Invalid,
    },
}

/// What is wrong with one candidate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// Two commas in a row, or a comma at the end.
    #[error("empty (two commas in a row, or one at the end?)")]
    Empty,
    /// Not an authority the URL parser accepts.
    #[error("{0}")]
    Syntax(url::ParseError),
    /// No `:PORT`.
    #[error("a port is required (HOST:PORT)")]
    NoPort,
    /// `:0`.
    #[error("port 0 cannot be connected to")]
    PortZero,
    /// Something after the port.
    #[error("only HOST:PORT may be given (no path, query or fragment)")]
    Trailing,
    /// An `x@` other than `relay@`.
    #[error("unknown mark {0:?}@ (the only one is relay@)")]
    Tag(String),
    /// An IPv4 address in a form other than four decimal parts.
    #[error("not an IPv4 address of four decimal parts")]
    LooseIpv4,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn parse(s: &str) -> Result<Candidates, CandidateError> {
        s.parse()
    }

    fn reason(s: &str) -> Invalid {
        match parse(s) {
            Err(CandidateError::Invalid { reason, .. }) => reason,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn the_example_parses_in_order() {
        let list = parse("dtcp://192.168.1.5:7001,[2001:db8::5]:7001,relay@relay.example.org:7777")
            .unwrap();
        assert_eq!(
            &list[..],
            &[
                Candidate::direct("192.168.1.5:7001".parse().unwrap()),
                Candidate::direct("[2001:db8::5]:7001".parse().unwrap()),
                Candidate {
                    host: Host::Name("relay.example.org".into()),
                    port: 7777,
                    role: Role::Relay
                },
            ]
        );
    }

    #[test]
    fn ipv6_forms() {
        let list = parse("dtcp://[::1]:1,[2001:DB8:0:0::5]:2,[::ffff:192.0.2.1]:3").unwrap();
        assert_eq!(list[0].host(), &Host::Ip(Ipv6Addr::LOCALHOST.into()));
        // Written back in the canonical form.
        assert_eq!(list[1].to_string(), "[2001:db8::5]:2");
        assert_eq!(
            list.to_string(),
            "dtcp://[::1]:1,[2001:db8::5]:2,[::ffff:192.0.2.1]:3"
        );
        assert!(matches!(
            reason("dtcp://2001:db8::5:7001"),
            Invalid::Syntax(_)
        ));
        assert!(matches!(
            reason("dtcp://[2001:db8::5:7001"),
            Invalid::Syntax(_)
        ));
        assert!(matches!(
            reason("dtcp://[fe80::1%25eth0]:7001"),
            Invalid::Syntax(_)
        ));
        assert!(matches!(
            reason("dtcp://[2001:db8::g]:7001"),
            Invalid::Syntax(_)
        ));
        assert_eq!(reason("dtcp://[::1]"), Invalid::NoPort);
    }

    #[test]
    fn names() {
        let list =
            parse("DTCP://Relay.Example.ORG:7777, bücher.example:1 ,relay@localhost:9").unwrap();
        assert_eq!(list[0].host(), &Host::Name("relay.example.org".into()));
        assert_eq!(list[1].host(), &Host::Name("xn--bcher-kva.example".into()));
        assert_eq!(list[2].role(), Role::Relay);
        assert_eq!(list[2].address(), "localhost:9");
        assert!(matches!(
            reason("dtcp://exa mple.org:1"),
            Invalid::Syntax(_)
        ));
        assert!(matches!(reason("dtcp://a<b.org:1"), Invalid::Syntax(_)));
        assert_eq!(reason("dtcp://relay.example.org"), Invalid::NoPort);
    }

    #[test]
    fn malformed_input_says_what_and_where() {
        assert_eq!(parse("192.168.1.5:7001"), Err(CandidateError::Scheme));
        assert_eq!(
            parse("http://192.168.1.5:7001"),
            Err(CandidateError::Scheme)
        );
        assert_eq!(parse("dtcp://"), Err(CandidateError::Empty));
        assert_eq!(parse("  dtcp://  "), Err(CandidateError::Empty));
        assert_eq!(reason("dtcp://a:1,,b:2"), Invalid::Empty);
        assert_eq!(reason("dtcp://a:1,"), Invalid::Empty);
        assert_eq!(reason("dtcp://a:0"), Invalid::PortZero);
        assert!(matches!(reason("dtcp://a:65536"), Invalid::Syntax(_)));
        assert!(matches!(reason("dtcp://a:x"), Invalid::Syntax(_)));
        assert!(matches!(reason("dtcp://:7001"), Invalid::Syntax(_)));
        assert_eq!(reason("dtcp://a:1/path"), Invalid::Trailing);
        assert_eq!(reason("dtcp://a:1?x=y"), Invalid::Trailing);
        assert_eq!(reason("dtcp://a:1#f"), Invalid::Trailing);
        assert_eq!(reason("dtcp://proxy@a:1"), Invalid::Tag("proxy".into()));
        assert!(matches!(reason("dtcp://relay:pw@a:1"), Invalid::Tag(_)));
        assert_eq!(reason("dtcp://192.168.1:1"), Invalid::LooseIpv4);
        assert_eq!(reason("dtcp://0x7f.1:1"), Invalid::LooseIpv4);
        assert!(matches!(reason("dtcp://256.1.1.1:1"), Invalid::Syntax(_)));
        let err = parse("dtcp://10.0.0.1:1,[::1:2").unwrap_err().to_string();
        assert_eq!(err, "candidate 2 (\"[::1:2\"): invalid IPv6 address");
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "dtcp://192.168.1.5:7001,[2001:db8::5]:7001,relay@relay.example.org:7777",
            "dtcp://relay@127.0.0.1:7777",
            "dtcp://[::1]:1,localhost:2",
        ] {
            let list = parse(s).unwrap();
            assert_eq!(list.to_string(), s);
            assert_eq!(parse(&list.to_string()).unwrap(), list);
        }
    }

    #[test]
    fn a_relay_is_one_candidate() {
        let r = Candidate::relay("relay.example.org:7777").unwrap();
        assert_eq!(r.role(), Role::Relay);
        assert_eq!(r.to_string(), "relay@relay.example.org:7777");
        assert_eq!(
            Candidate::relay("relay@[::1]:7").unwrap().address(),
            "[::1]:7"
        );
        assert!(Candidate::relay("no-port").is_err());
        let mut list = Candidates::new(vec![Candidate::direct("10.0.0.1:1".parse().unwrap())]);
        list.push(r.clone());
        list.push(r);
        assert_eq!(list.len(), 2);
        // The same address, now known as a relay, stays in place, marked.
        list.push(Candidate::relay("10.0.0.1:1").unwrap());
        assert_eq!(
            list.to_string(),
            "dtcp://relay@10.0.0.1:1,relay@relay.example.org:7777"
        );
    }
}
