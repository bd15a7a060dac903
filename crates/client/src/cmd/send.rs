//! `dtcp send`: the Initiator. Offers its own listeners and the relay,
//! tells the person what to hand the receiver, and sends the file on
//! whichever path the receiver completes first.

use std::path::Path;

use anyhow::{Context, bail};
use dtcp_client::transfer;
use dtcp_client::{Initiator, OfferEvent, tls};
use tokio::io::AsyncRead;

use super::args::{Listen, Session, listen_addrs};
use super::progress::{announce, finish, progress};

/// Runs `dtcp send`.
pub(crate) async fn send(
    session: Session,
    listen: &[Listen],
    use_tls: bool,
    file: &Path,
) -> anyhow::Result<()> {
    let triple = session.triple()?;
    let addrs = listen_addrs(listen)?;
    if addrs.is_empty() && session.relay.is_none() {
        bail!("give --relay HOST:PORT, --listen ADDR, or both");
    }
    let (mut src, size): (Box<dyn AsyncRead + Unpin + Send>, Option<u64>) =
        if file == Path::new("-") {
            (Box::new(tokio::io::stdin()), None)
        } else {
            let f = tokio::fs::File::open(file)
                .await
                .with_context(|| format!("opening {}", file.display()))?;
            let len = f.metadata().await?.len();
            (Box::new(f), Some(len))
        };
    let identity = if use_tls {
        let id = tls::Identity::generate()?;
        eprintln!("TLS fingerprint: {}", id.fingerprint());
        eprintln!(
            "(give it to the receiver: dtcp recv --tls-fingerprint {} ...)",
            id.fingerprint()
        );
        Some(id)
    } else {
        None
    };
    let offer = Initiator::offer(&addrs, session.relay.as_deref(), &triple).await?;
    if !addrs.is_empty() {
        let list = offer.candidates();
        eprintln!("candidates: {list}");
        eprintln!("(give them to the receiver: dtcp recv --candidates '{list}' ...)");
    }
    let mut places: Vec<String> = offer
        .local_addrs()
        .iter()
        .map(|a| format!("on {a}"))
        .collect();
    if let Some(relay) = &session.relay {
        places.push(format!("through the relay {relay}"));
    }
    eprintln!("waiting for the receiver {} ...", places.join(", "));
    let paired = offer
        .accept_with(|event| match event {
            OfferEvent::RelayFailed(e) => {
                eprintln!("dtcp: the relay path failed ({e}); still waiting on the listeners");
            }
            OfferEvent::DirectRefused { peer, condition } => {
                eprintln!("dtcp: refused a connection from {peer}: {condition}");
            }
        })
        .await?;
    announce(&paired, "receiver");
    let route = paired.route;
    let bar = progress(size, route);
    let sent = match identity {
        Some(id) => {
            let mut s = tls::accept(paired.stream, &id).await?;
            transfer::send(&mut s, &mut src, size, |n| bar.inc(n)).await
        }
        None => {
            let mut s = paired.stream;
            transfer::send(&mut s, &mut src, size, |n| bar.inc(n)).await
        }
    };
    finish(&bar, sent, "sent", route)
}
