//! XEP-0065 mode's XMPP side against real software: the component link
//! (crates/xmpp) against a real Prosody, asked by a real XMPP client
//! (slixmpp). The relay is stood in for by the test, which holds the
//! activation channel's receiving end.

use std::time::{Duration, Instant};

use dtcp_tests::settles;
use dtcp_tests::xmpp::{COMPONENT, COMPONENT_SECRET, DOMAIN, OTHER_COMPONENT, Prosody, Slixmpp};
use dtcp_xmpp::{
    ActivateError, Activation, Component, LinkState, Secret, Timings, XmppConfig, channel,
};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Where the test's component says the SOCKS5 port is.
const ADVERTISE: &str = "127.0.0.1:7625";

/// Short timers, so that reconnects, standbys and keepalives happen within a test.
fn timings() -> Timings {
    Timings {
        connect_timeout: Duration::from_secs(5),
        keepalive: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(1),
        ping_timeout: Duration::from_secs(2),
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_secs(1),
        standby_retry: Duration::from_millis(300),
        activation_timeout: Duration::from_secs(2),
    }
}

fn config(prosody: &Prosody, component: &str, secret: &str, allow: &[&str]) -> XmppConfig {
    let mut c = XmppConfig::new(
        component,
        prosody.component_addr(),
        Secret::new(secret),
        ADVERTISE,
    )
    .expect("valid configuration")
    .allow_domains(allow)
    .expect("valid domains");
    c.timings = timings();
    c
}

/// A component link of the test's own, stopped when dropped.
struct Link {
    component: Option<Component>,
    activations: mpsc::Receiver<Activation>,
    shutdown: CancellationToken,
    state: watch::Receiver<LinkState>,
}

impl Link {
    fn start(config: XmppConfig) -> Link {
        let (activator, activations) = channel(16);
        let shutdown = CancellationToken::new();
        let component = Component::spawn(config, activator, shutdown.clone());
        let state = component.state();
        Link {
            component: Some(component),
            activations,
            shutdown,
            state,
        }
    }

    fn now(&self) -> LinkState {
        *self.state.borrow()
    }

    /// Waits until the link is in `want`; panics after `limit`.
    async fn wait_for(&mut self, want: LinkState, limit: Duration) {
        let reached = tokio::time::timeout(limit, self.state.wait_for(|s| *s == want))
            .await
            .is_ok_and(|r| r.is_ok());
        assert!(
            reached,
            "the link is {:?}, not {want:?}, after {limit:?}",
            self.now()
        );
    }

    /// Stops the link and waits for its task to end.
    async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(c) = self.component.take() {
            tokio::time::timeout(Duration::from_secs(5), c.stopped())
                .await
                .expect("the link stops within 5 s");
        }
    }

    async fn next_activation(&mut self) -> Activation {
        tokio::time::timeout(Duration::from_secs(20), self.activations.recv())
            .await
            .expect("no activation reached the relay's channel")
            .expect("channel open")
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The slixmpp client's disco#info and streamhost query, as it printed them.
async fn query(prosody: &Prosody, component: &str) -> (serde_json::Value, serde_json::Value) {
    let mut c = Slixmpp::start(
        prosody,
        "romeo",
        "orchard",
        json!({"op": "query", "component": component}),
    );
    let (info, streamhost) = (c.next().await, c.next().await);
    c.finish().await;
    (info, streamhost)
}

fn assert_serves(info: &serde_json::Value, streamhost: &serde_json::Value, component: &str) {
    assert_eq!(info["type"], "result", "disco#info: {info}");
    assert!(
        info["identities"]
            .as_array()
            .unwrap()
            .contains(&json!(["proxy", "bytestreams"])),
        "{info}"
    );
    assert!(
        info["features"]
            .as_array()
            .unwrap()
            .contains(&json!("http://jabber.org/protocol/bytestreams")),
        "{info}"
    );
    assert_eq!(
        streamhost,
        &json!({"type": "result", "streamhost": {"jid": component, "host": "127.0.0.1", "port": 7625}})
    );
}

#[tokio::test]
async fn the_component_authenticates_and_answers_disco_and_the_streamhost_query() {
    let prosody = Prosody::start(&["romeo"]);
    let mut link = Link::start(config(&prosody, COMPONENT, COMPONENT_SECRET, &[]));
    link.wait_for(LinkState::Connected, Duration::from_secs(10))
        .await;
    let (info, streamhost) = query(&prosody, COMPONENT).await;
    assert_serves(&info, &streamhost, COMPONENT);

    // A sleep: several idle timeouts of silence, through which the
    // keepalive pings through the server keep the link up, without a single
    // state change.
    link.state.mark_unchanged();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !link.state.has_changed().unwrap(),
        "the link changed state while idle: {:?}",
        link.now()
    );
    assert_eq!(link.now(), LinkState::Connected);
    let (info, streamhost) = query(&prosody, COMPONENT).await;
    assert_serves(&info, &streamhost, COMPONENT);

    // A wrong secret never gets in; the server says why.
    let mut wrong = Link::start(config(&prosody, OTHER_COMPONENT, "wrong secret", &[]));
    let refused = "Given token does not match calculated token";
    let p = &prosody;
    let said = settles(Duration::from_secs(10), || async move {
        p.log().contains(refused)
    })
    .await;
    assert!(said, "{}", prosody.log());
    assert_eq!(wrong.now(), LinkState::Down);
    wrong.stop().await;
    link.stop().await;
    assert_eq!(link.now(), LinkState::Down);
}

/// One activation from slixmpp: returns the hash the client computed and
/// what reached the relay's channel, and answers it with `answer`.
async fn activate(
    prosody: &Prosody,
    link: &mut Link,
    component: &str,
    user: &str,
    sid: &str,
    target: &str,
    answer: Option<Result<(), ActivateError>>,
) -> serde_json::Value {
    let mut c = Slixmpp::start(
        prosody,
        user,
        "orchard",
        json!({"op": "activate", "component": component, "sid": sid, "target": target}),
    );
    let computed = c.next().await;
    match answer {
        Some(answer) => {
            let a = link.next_activation().await;
            assert_eq!(
                a.hash.to_string(),
                computed["hash"].as_str().unwrap(),
                "the component's hash is the client's"
            );
            assert_eq!(a.sid, sid);
            assert_eq!(a.requester, computed["requester"].as_str().unwrap());
            let outcome_line = tokio::spawn(async move {
                let line = c.next().await;
                c.finish().await;
                line
            });
            a.reply.send(answer).unwrap();
            outcome_line.await.unwrap()
        }
        None => {
            let line = c.next().await;
            c.finish().await;
            line
        }
    }
}

#[tokio::test]
async fn activation_reaches_the_relay_with_the_clients_hash_and_answers_the_client() {
    let prosody = Prosody::start(&["romeo", "tybalt"]);
    let mut link = Link::start(config(&prosody, COMPONENT, COMPONENT_SECRET, &[DOMAIN]));
    link.wait_for(LinkState::Connected, Duration::from_secs(10))
        .await;

    // The relay pairs: `result`.
    let got = activate(
        &prosody,
        &mut link,
        COMPONENT,
        "romeo",
        "sid-1",
        "juliet@localhost/balcony",
        Some(Ok(())),
    )
    .await;
    assert_eq!(got, json!({"type": "result"}));

    // A Target JID written with capitals hashes as the server normalises it,
    // which is what slixmpp's own JID class computes.
    let got = activate(
        &prosody,
        &mut link,
        COMPONENT,
        "romeo",
        "sid-2",
        "Juliet@LOCALHOST/balcony",
        Some(Err(ActivateError::NotFound)),
    )
    .await;
    assert_eq!(got["condition"], "item-not-found", "{got}");
    assert_eq!(got["error_type"], "cancel", "{got}");

    let got = activate(
        &prosody,
        &mut link,
        COMPONENT,
        "tybalt",
        "sid-3",
        "juliet@localhost/balcony",
        Some(Err(ActivateError::Failed)),
    )
    .await;
    assert_eq!(got["condition"], "internal-server-error", "{got}");

    // A relay that does not answer within the activation timeout.
    let mut c = Slixmpp::start(
        &prosody,
        "romeo",
        "orchard",
        json!({"op": "activate", "sid": "sid-4", "target": "juliet@localhost/balcony"}),
    );
    c.next().await;
    let held = link.next_activation().await;
    let got = c.next().await;
    c.finish().await;
    assert_eq!(got["condition"], "remote-server-timeout", "{got}");
    drop(held);
    link.stop().await;
}

#[tokio::test]
async fn requesters_outside_the_allowed_domains_are_refused() {
    let prosody = Prosody::start(&["romeo"]);
    let mut link = Link::start(config(
        &prosody,
        OTHER_COMPONENT,
        COMPONENT_SECRET,
        &["example.org"],
    ));
    link.wait_for(LinkState::Connected, Duration::from_secs(10))
        .await;
    let got = activate(
        &prosody,
        &mut link,
        OTHER_COMPONENT,
        "romeo",
        "sid-1",
        "juliet@localhost/balcony",
        None,
    )
    .await;
    assert_eq!(got["condition"], "not-allowed", "{got}");
    let (info, streamhost) = query(&prosody, OTHER_COMPONENT).await;
    assert_eq!(info["type"], "result", "disco#info is for everyone: {info}");
    assert_eq!(streamhost["condition"], "forbidden", "{streamhost}");
    assert!(
        link.activations.try_recv().is_err(),
        "nothing reached the relay"
    );
    link.stop().await;
}

#[tokio::test]
async fn the_link_reconnects_after_prosody_restarts() {
    let mut prosody = Prosody::start(&["romeo"]);
    let mut link = Link::start(config(&prosody, COMPONENT, COMPONENT_SECRET, &[]));
    link.wait_for(LinkState::Connected, Duration::from_secs(10))
        .await;
    let started = Instant::now();
    prosody.restart();
    let restarted = started.elapsed();
    // The kill is seen at once; the reconnect follows the backoff.
    if link.now() == LinkState::Connected {
        link.wait_for(LinkState::Down, Duration::from_secs(5)).await;
    }
    link.wait_for(LinkState::Connected, Duration::from_secs(10))
        .await;
    eprintln!(
        "component link back {:?} after the kill (Prosody took {restarted:?} to open its ports)",
        started.elapsed()
    );
    let (info, streamhost) = query(&prosody, COMPONENT).await;
    assert_serves(&info, &streamhost, COMPONENT);
    link.stop().await;
}

#[tokio::test]
async fn a_standby_takes_over_when_the_connected_link_goes() {
    let prosody = Prosody::start(&["romeo"]);
    let mut first = Link::start(config(&prosody, COMPONENT, COMPONENT_SECRET, &[]));
    first
        .wait_for(LinkState::Connected, Duration::from_secs(10))
        .await;
    let mut second = Link::start(config(&prosody, COMPONENT, COMPONENT_SECRET, &[]));
    second
        .wait_for(LinkState::Standby, Duration::from_secs(10))
        .await;
    assert!(
        prosody.log().contains("Component already connected"),
        "Prosody refused the second connection as a conflict"
    );
    // A sleep: for two seconds the standby keeps trying, without
    // disturbing the connected link.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(first.now(), LinkState::Connected);
    assert_eq!(second.now(), LinkState::Standby);

    let dropped = Instant::now();
    first.stop().await;
    second
        .wait_for(LinkState::Connected, Duration::from_secs(5))
        .await;
    let takeover = dropped.elapsed();
    eprintln!("standby took over {takeover:?} after the connected link went");
    assert!(
        takeover < Duration::from_secs(3),
        "takeover took {takeover:?}"
    );
    let (info, streamhost) = query(&prosody, COMPONENT).await;
    assert_serves(&info, &streamhost, COMPONENT);
    second.stop().await;
}
