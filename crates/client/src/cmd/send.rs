//! `dtcp send`: the Initiator. Offers its own listeners and the relay,
//! tells the person what to hand the receiver (in code mode: the code and
//! the command), and sends the file or directory on whichever path the
//! receiver completes first.

use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use dtcp_client::code::{self, Code};
use dtcp_client::transfer;
use dtcp_client::{Initiator, Offer, OfferEvent, Paired, tls};
use dtcp_wire::Triple;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::args::{Listen, Session, listen_addrs};
use super::exit::Report;
use super::files::{self, Source};
use super::progress::{announce, finish, progress};

/// Runs `dtcp send`.
pub(crate) async fn send(
    session: Session,
    listen: &[Listen],
    use_tls: bool,
    notify_wait: Duration,
    file: &Path,
    report: &Report,
) -> anyhow::Result<()> {
    let addrs = listen_addrs(listen)?;
    if addrs.is_empty() && session.relay.is_none() {
        bail!("give --relay HOST:PORT, --listen ADDR, or both");
    }
    let explicit = session.explicit();
    let code = (!explicit || session.with_code).then(Code::generate);
    let triple = match &code {
        Some(c) if !explicit => c.triple(),
        _ => session.triple()?,
    };
    let mut src = files::open(file, code.is_some()).await?;
    let identity = if use_tls && explicit {
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
    let list = offer.candidates();
    match &code {
        Some(code) => report.code(
            &code.to_string(),
            &receiver_command(&session, &addrs, &list),
        ),
        None if !addrs.is_empty() => {
            eprintln!("candidates: {list}");
            eprintln!("(give them to the receiver: dtcp recv --candidates '{list}' ...)");
        }
        None => {}
    }
    let paired = wait(offer, &session).await?;
    announce(&paired, "receiver");
    let route = paired.route;
    let bar = progress(src.size, route);
    let sent = match (code, identity) {
        (Some(code), _) => match code::sender(paired.stream, &code).await {
            Ok(mut s) => match with_header(&mut s, &mut src, &bar).await {
                Ok(n) => Ok(n),
                Err(e) => {
                    bar.finish_and_clear();
                    return Err(e);
                }
            },
            Err(e @ code::PakeError::WrongCode) => {
                bar.finish_and_clear();
                eprintln!("dtcp: {e}");
                burn(&addrs, &session, &triple, notify_wait).await;
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        },
        (None, Some(id)) => {
            let mut s = tls::accept(paired.stream, &id).await?;
            transfer::send(&mut s, &mut src.reader, src.size, |n| bar.inc(n)).await
        }
        (None, None) => {
            let mut s = paired.stream;
            transfer::send(&mut s, &mut src.reader, src.size, |n| bar.inc(n)).await
        }
    };
    let n = finish(&bar, sent, "sent", route)?;
    report.done("send", n, route, None);
    Ok(())
}

/// Code mode: the header, the receiver's answer, then the usual framing.
async fn with_header<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    src: &mut Source,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<u64> {
    src.header.write(s).await?;
    s.flush().await?;
    files::read_answer(s).await?;
    Ok(transfer::send(s, &mut src.reader, src.size, |n| bar.inc(n)).await?)
}

/// Waits for the receiver on the offer, telling what goes wrong meanwhile.
async fn wait(offer: Offer, session: &Session) -> anyhow::Result<Paired> {
    let mut places: Vec<String> = offer
        .local_addrs()
        .iter()
        .map(|a| format!("on {a}"))
        .collect();
    if let Some(relay) = &session.relay {
        places.push(format!("through the relay {relay}"));
    }
    eprintln!("waiting for the receiver {} ...", places.join(", "));
    Ok(offer
        .accept_with(|event| match event {
            OfferEvent::RelayFailed(e) => {
                eprintln!("dtcp: the relay path failed ({e}); still waiting on the listeners");
            }
            OfferEvent::DirectRefused { peer, condition } => {
                eprintln!("dtcp: refused a connection from {peer}: {condition}");
            }
        })
        .await?)
}

/// What the receiver types: `dtcp recv`, with the relay unless the
/// environment gives it, and the candidates when there are listeners. The
/// code is typed at its prompt, not on its command line.
fn receiver_command(
    session: &Session,
    addrs: &[std::net::SocketAddr],
    list: &dtcp_client::Candidates,
) -> String {
    let mut cmd = String::from("dtcp recv");
    if session.explicit() {
        cmd.push_str(" --code (with the same key and JIDs)");
    }
    if !addrs.is_empty() {
        cmd.push_str(&format!(" --candidates '{list}'"));
    } else if let Some(relay) = &session.relay
        && std::env::var("DTCP_RELAY").ok().as_deref() != Some(relay.as_str())
    {
        cmd.push_str(&format!(" --relay {relay}"));
    }
    cmd
}

/// After a wrong code the code is burned: the session is offered once more
/// for up to `limit`, and whoever claims it is told so (no second guess).
/// The real receiver, coming after someone else took the first try, learns
/// why instead of waiting for a sender that is gone.
async fn burn(addrs: &[std::net::SocketAddr], session: &Session, triple: &Triple, limit: Duration) {
    if limit.is_zero() {
        return;
    }
    eprintln!(
        "dtcp: telling the next receiver that this code is burned (for up to {}s)",
        limit.as_secs()
    );
    let tell = async {
        // Listeners get fresh ports; the relay path is the one a receiver
        // already has.
        let addrs: Vec<_> = addrs
            .iter()
            .map(|a| std::net::SocketAddr::new(a.ip(), 0))
            .collect();
        let offer = Initiator::offer(&addrs, session.relay.as_deref(), triple).await?;
        let paired = offer.accept().await?;
        code::pake::burned(paired.stream).await?;
        anyhow::Ok(())
    };
    match tokio::time::timeout(limit, tell).await {
        Ok(Ok(())) => eprintln!("dtcp: told a receiver that the code is burned"),
        Ok(Err(e)) => eprintln!("dtcp: could not tell the next receiver: {e:#}"),
        Err(_) => {}
    }
}
