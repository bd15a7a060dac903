//! The attack suite: each way one client (or one crowd) could try to
//! exhaust a node, run from loopback against real `dtcp-relay` processes
//! while a legitimate pair from another address probes throughout
//! ([`dtcp_tests::abuse::Prober`]). Each asserts that every legitimate pair
//! succeeds, that the node's memory stays within the budget docs/SECURITY.md
//! gives for that attack, that descriptors never run out, and that the node
//! goes back to its idle footprint afterwards.
//!
//! By what is attacked: [`plane`] (the forwarding plane and metrics ports),
//! [`edge`] (connection slots and per-address shares), [`socks5`] (XEP-0065
//! mode's SOCKS5 pairs), [`waiting`] (what waiting connections cost: early
//! bytes, Redis lookups, pipes), [`store`] (a Redis that cannot be trusted
//! with sizes).

/// One attack at a time: each measures a node's memory, descriptors and
/// CPU against a budget, which another attack running beside it on the same
/// two cores would blur.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for the other attacks to end; held for the test's whole run.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

mod edge;
mod plane;
mod socks5;
mod store;
mod waiting;
