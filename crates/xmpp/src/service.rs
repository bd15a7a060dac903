//! What the component answers (docs/PROTOCOL.md section 6, XEP-0065 section 6):
//! disco#info, the streamhost query, and `<activate>`. Pure: an IQ in, an
//! answer (or an activation to hand to the relay) out; the link does the I/O.

use std::collections::BTreeSet;

use dtcp_wire::socks5::StreamHash;
use jid::Jid;
use minidom::Element;
use minidom::rxml::NcName;
use tokio_xmpp::parsers::disco::{DiscoInfoResult, DiscoItemsResult, Identity};
use tokio_xmpp::parsers::iq::Iq;
use tokio_xmpp::parsers::ns;
use tokio_xmpp::parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};

use crate::ActivateError;
use crate::config::Advertise;

/// XEP-0065's namespace.
pub const NS_BYTESTREAMS: &str = "http://jabber.org/protocol/bytestreams";

/// The name disco#info gives the service.
const SERVICE_NAME: &str = "SOCKS5 Bytestreams Service";

/// What to do with an incoming IQ.
#[derive(Debug)]
pub(crate) enum Handled {
    /// Send this answer.
    Reply(Box<Iq>),
    /// Ask the relay, then answer with [`PendingActivation::answer`].
    Activate(PendingActivation),
    /// Nothing to send (a `result` or `error`, e.g. the answer to a ping).
    Ignore,
}

/// An `<activate>` that passed the component's checks, waiting for the relay.
#[derive(Debug)]
pub(crate) struct PendingActivation {
    /// SHA1(sid + requester + target).
    pub hash: StreamHash,
    /// The session id.
    pub sid: String,
    /// The requester: the IQ's `from`.
    pub requester: Jid,
    /// The Target: the `<activate>` text, normalised.
    pub target: Jid,
    /// The IQ's id, for the answer.
    id: String,
}

/// Why the relay's answer did not come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoAnswer {
    /// The relay did not answer within the activation timeout.
    Timeout,
    /// The relay is gone (the channel or the reply was dropped).
    Gone,
}

/// The component's answers.
#[derive(Debug, Clone)]
pub(crate) struct Service {
    component: Jid,
    advertise: Advertise,
    allow_domains: Vec<String>,
}

impl Service {
    pub(crate) fn new(component: Jid, advertise: Advertise, allow_domains: Vec<String>) -> Self {
        Service {
            component,
            advertise,
            allow_domains,
        }
    }

    /// The answer to an IQ addressed to the component.
    pub(crate) fn handle(&self, iq: Iq) -> Handled {
        match iq {
            Iq::Get {
                from, id, payload, ..
            } => Handled::Reply(Box::new(self.get(from, id, &payload))),
            Iq::Set {
                from, id, payload, ..
            } => self.set(from, id, &payload),
            Iq::Result { .. } | Iq::Error { .. } => Handled::Ignore,
        }
    }

    fn get(&self, from: Option<Jid>, id: String, payload: &Element) -> Iq {
        let to = from.clone();
        let answer = if payload.is("query", ns::DISCO_INFO) {
            match payload.attr("node") {
                Some(_) => Err(error(DefinedCondition::ItemNotFound, "no such node")),
                None => Ok(Some(Element::from(disco_info()))),
            }
        } else if payload.is("query", ns::DISCO_ITEMS) {
            Ok(Some(Element::from(DiscoItemsResult {
                node: payload.attr("node").map(str::to_owned),
                items: Vec::new(),
                rsm: None,
            })))
        } else if payload.is("query", NS_BYTESTREAMS) {
            match self.check_requester(from.as_ref()) {
                Err(_) => Err(error(
                    DefinedCondition::Forbidden,
                    "this proxy does not serve your domain",
                )),
                Ok(()) => Ok(Some(self.streamhost())),
            }
        } else if payload.is("ping", ns::PING) {
            Ok(None)
        } else {
            Err(error(
                DefinedCondition::ServiceUnavailable,
                "unsupported query",
            ))
        };
        self.answer_iq(to, id, answer)
    }

    fn set(&self, from: Option<Jid>, id: String, payload: &Element) -> Handled {
        if !payload.is("query", NS_BYTESTREAMS) {
            let e = error(DefinedCondition::ServiceUnavailable, "unsupported request");
            return Handled::Reply(Box::new(self.answer_iq(from, id, Err(e))));
        }
        match self.activation(from.as_ref(), payload) {
            Ok((requester, sid, target)) => Handled::Activate(PendingActivation {
                hash: StreamHash::of(&sid, &requester.to_string(), &target.to_string()),
                sid,
                requester,
                target,
                id,
            }),
            Err(e) => Handled::Reply(Box::new(self.answer_iq(from, id, Err(e)))),
        }
    }

    /// The checks of an activation request: who asks, the sid, the Target.
    // The error is the stanza error itself, built once per refused request.
    #[allow(clippy::result_large_err)]
    fn activation(
        &self,
        from: Option<&Jid>,
        query: &Element,
    ) -> Result<(Jid, String, Jid), StanzaError> {
        let requester = from.ok_or_else(|| error(DefinedCondition::BadRequest, "no sender"))?;
        self.check_requester(Some(requester)).map_err(|()| {
            error(
                DefinedCondition::NotAllowed,
                "this proxy does not serve your domain",
            )
        })?;
        let sid = query
            .attr("sid")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| error(DefinedCondition::BadRequest, "no sid"))?;
        let target = query
            .get_child("activate", NS_BYTESTREAMS)
            .map(|a| a.text())
            .ok_or_else(|| error(DefinedCondition::BadRequest, "no <activate/>"))?;
        // Normalised as the servers do (nodeprep, nameprep, resourceprep), so
        // the hash is the one the clients computed from their own addresses.
        let target = Jid::new(target.trim()).map_err(|_| {
            error(
                DefinedCondition::JidMalformed,
                "the Target's JID is malformed",
            )
        })?;
        Ok((requester.clone(), sid.to_owned(), target))
    }

    /// `Err` when `--xmpp-allow-domain` is set and the requester's domain is not in it.
    fn check_requester(&self, from: Option<&Jid>) -> Result<(), ()> {
        if self.allow_domains.is_empty() {
            return Ok(());
        }
        let domain = from.map(|j| j.domain().as_str());
        match domain {
            Some(d) if self.allow_domains.iter().any(|a| a == d) => Ok(()),
            _ => Err(()),
        }
    }

    fn streamhost(&self) -> Element {
        let name = |n: &str| NcName::try_from(n).expect("a valid XML name");
        Element::builder("query", NS_BYTESTREAMS)
            .append(
                Element::builder("streamhost", NS_BYTESTREAMS)
                    .attr(name("jid"), self.component.to_string())
                    .attr(name("host"), self.advertise.host.clone())
                    .attr(name("port"), self.advertise.port.to_string())
                    .build(),
            )
            .build()
    }

    fn answer_iq(
        &self,
        to: Option<Jid>,
        id: String,
        answer: Result<Option<Element>, StanzaError>,
    ) -> Iq {
        let from = Some(self.component.clone());
        match answer {
            Ok(payload) => Iq::Result {
                from,
                to,
                id,
                payload,
            },
            Err(error) => Iq::Error {
                from,
                to,
                id,
                error,
                payload: None,
            },
        }
    }
}

impl PendingActivation {
    /// The answer to the requester, from the relay's outcome.
    pub(crate) fn answer(
        self,
        service: &Service,
        outcome: Result<Result<(), ActivateError>, NoAnswer>,
    ) -> Iq {
        let answer = match outcome {
            Ok(Ok(())) => Ok(None),
            Ok(Err(ActivateError::NotFound)) => Err(error(
                DefinedCondition::ItemNotFound,
                "the Target and the requester are not both connected",
            )),
            Ok(Err(ActivateError::Failed)) => Err(error(
                DefinedCondition::InternalServerError,
                "the relay could not join the connections",
            )),
            Err(NoAnswer::Timeout) => Err(error(
                DefinedCondition::RemoteServerTimeout,
                "the relay did not answer in time",
            )),
            Err(NoAnswer::Gone) => Err(error(
                DefinedCondition::InternalServerError,
                "the relay is not accepting activations",
            )),
        };
        service.answer_iq(Some(self.requester), self.id, answer)
    }
}

/// A stanza error with the type RFC 6120 section 8.3.3 gives its condition.
fn error(condition: DefinedCondition, text: &str) -> StanzaError {
    let type_ = match condition {
        DefinedCondition::BadRequest | DefinedCondition::JidMalformed => ErrorType::Modify,
        DefinedCondition::Forbidden => ErrorType::Auth,
        DefinedCondition::InternalServerError | DefinedCondition::RemoteServerTimeout => {
            ErrorType::Wait
        }
        _ => ErrorType::Cancel,
    };
    StanzaError::new(type_, condition, "en", text)
}

fn disco_info() -> DiscoInfoResult {
    DiscoInfoResult {
        node: None,
        identities: vec![Identity::new("proxy", "bytestreams", "en", SERVICE_NAME)],
        features: BTreeSet::from(
            [ns::DISCO_INFO, ns::DISCO_ITEMS, NS_BYTESTREAMS, ns::PING].map(str::to_owned),
        ),
        extensions: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(allow: &[&str]) -> Service {
        Service::new(
            Jid::new("proxy.example.org").unwrap(),
            "relay.example.org:7625".parse().unwrap(),
            allow.iter().map(|s| s.to_string()).collect(),
        )
    }

    fn iq(xml: &str) -> Iq {
        let el: Element = xml.parse().unwrap();
        Iq::try_from(el).unwrap()
    }

    fn reply(h: Handled) -> Element {
        match h {
            Handled::Reply(iq) => Element::from(*iq),
            other => panic!("not a reply: {other:?}"),
        }
    }

    fn condition(el: &Element) -> String {
        assert_eq!(el.attr("type"), Some("error"), "{el:?}");
        let e = el.children().find(|c| c.name() == "error").unwrap();
        e.children()
            .find(|c| c.ns() == ns::XMPP_STANZAS && c.name() != "text")
            .unwrap()
            .name()
            .to_owned()
    }

    const C: &str = "jabber:component:accept";

    #[test]
    fn answers_disco_info() {
        let el = reply(service(&[]).handle(iq(&format!(
            "<iq xmlns='{C}' type='get' id='d1' from='romeo@montague.lit/orchard' to='proxy.example.org'>\
             <query xmlns='{}'/></iq>",
            ns::DISCO_INFO
        ))));
        assert_eq!(el.attr("type"), Some("result"));
        assert_eq!(el.attr("id"), Some("d1"));
        assert_eq!(el.attr("to"), Some("romeo@montague.lit/orchard"));
        assert_eq!(el.attr("from"), Some("proxy.example.org"));
        let q = el.get_child("query", ns::DISCO_INFO).unwrap();
        let id = q.get_child("identity", ns::DISCO_INFO).unwrap();
        assert_eq!(
            (id.attr("category"), id.attr("type")),
            (Some("proxy"), Some("bytestreams"))
        );
        assert!(
            q.children()
                .any(|f| f.name() == "feature" && f.attr("var") == Some(NS_BYTESTREAMS))
        );
    }

    #[test]
    fn answers_the_streamhost_query_for_allowed_domains_only() {
        let query = |from: &str| {
            iq(&format!(
                "<iq xmlns='{C}' type='get' id='s1' from='{from}' to='proxy.example.org'>\
                 <query xmlns='{NS_BYTESTREAMS}'/></iq>"
            ))
        };
        let el = reply(service(&["montague.lit"]).handle(query("romeo@montague.lit/orchard")));
        let sh = el
            .get_child("query", NS_BYTESTREAMS)
            .and_then(|q| q.get_child("streamhost", NS_BYTESTREAMS))
            .unwrap();
        assert_eq!(sh.attr("jid"), Some("proxy.example.org"));
        assert_eq!(sh.attr("host"), Some("relay.example.org"));
        assert_eq!(sh.attr("port"), Some("7625"));
        let el = reply(service(&["montague.lit"]).handle(query("tybalt@capulet.lit/x")));
        assert_eq!(condition(&el), "forbidden");
    }

    fn activate(from: &str, sid: Option<&str>, target: Option<&str>) -> Iq {
        let sid = sid.map(|s| format!(" sid='{s}'")).unwrap_or_default();
        let target = target
            .map(|t| format!("<activate>{t}</activate>"))
            .unwrap_or_default();
        iq(&format!(
            "<iq xmlns='{C}' type='set' id='a1' from='{from}' to='proxy.example.org'>\
             <query xmlns='{NS_BYTESTREAMS}'{sid}>{target}</query></iq>"
        ))
    }

    #[test]
    fn activation_hashes_the_normalised_jids() {
        let h = service(&[]).handle(activate(
            "requester@example.com/foo",
            Some("vxf9n471bn46"),
            Some(" Target@Example.ORG/bar "),
        ));
        let Handled::Activate(p) = h else {
            panic!("{h:?}")
        };
        // printf 'vxf9n471bn46requester@example.com/footarget@example.org/bar' | sha1sum
        assert_eq!(
            p.hash.to_string(),
            "98b8d688d0f5d895fd41c5e7309a2e9e33ba32ff"
        );
        assert_eq!(p.target.to_string(), "target@example.org/bar");
        let ok = Element::from(p.answer(&service(&[]), Ok(Ok(()))));
        assert_eq!(ok.attr("type"), Some("result"));
        assert_eq!(ok.attr("id"), Some("a1"));
        assert_eq!(ok.attr("to"), Some("requester@example.com/foo"));
    }

    #[test]
    fn activation_errors() {
        let s = service(&["example.com"]);
        let cases = [
            (
                activate("requester@example.com/foo", None, Some("t@x")),
                "bad-request",
            ),
            (
                activate("requester@example.com/foo", Some("s"), None),
                "bad-request",
            ),
            (
                activate("requester@example.com/foo", Some("s"), Some("@x")),
                "jid-malformed",
            ),
            (
                activate("intruder@example.net/foo", Some("s"), Some("t@x")),
                "not-allowed",
            ),
        ];
        for (iq, want) in cases {
            assert_eq!(condition(&reply(s.handle(iq))), want);
        }
        let pending =
            |s: &Service| match s.handle(activate("r@example.com/a", Some("s"), Some("t@x"))) {
                Handled::Activate(p) => p,
                other => panic!("{other:?}"),
            };
        for (outcome, want) in [
            (Ok(Err(ActivateError::NotFound)), "item-not-found"),
            (Ok(Err(ActivateError::Failed)), "internal-server-error"),
            (Err(NoAnswer::Timeout), "remote-server-timeout"),
            (Err(NoAnswer::Gone), "internal-server-error"),
        ] {
            let el = Element::from(pending(&s).answer(&s, outcome));
            assert_eq!(condition(&el), want);
        }
    }

    #[test]
    fn unknown_queries_are_refused_and_answers_ignored() {
        let s = service(&[]);
        let el = reply(s.handle(iq(&format!(
            "<iq xmlns='{C}' type='get' id='v' from='a@b/c' to='proxy.example.org'>\
             <query xmlns='jabber:iq:version'/></iq>"
        ))));
        assert_eq!(condition(&el), "service-unavailable");
        let el = reply(s.handle(iq(&format!(
            "<iq xmlns='{C}' type='get' id='p' from='a@b/c' to='proxy.example.org'>\
             <ping xmlns='urn:xmpp:ping'/></iq>"
        ))));
        assert_eq!(el.attr("type"), Some("result"));
        let h = s.handle(iq(&format!(
            "<iq xmlns='{C}' type='result' id='x' from='a@b/c'/>"
        )));
        assert!(matches!(h, Handled::Ignore));
    }
}
