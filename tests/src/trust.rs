//! What the trust tests need: signed keys, sealed store records made with
//! a secret (standing in for a leak of it), and a fake node that records
//! what a Bridge call carries, decoded by a real HTTP/2 library; and a
//! certificate for the plane's TLS.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use dtcp_client::dtcp_wire::{Secrets, Triple, sign};
use tokio::net::{TcpListener, TcpStream};

/// The key secret the tests' relays are started with.
pub const KEY_SECRET: &str = "test-key-secret";

/// The Unix time now, in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A triple for `name` whose key is signed with `secret`, expiring
/// `expires_in` seconds from now (negative: in the past).
pub fn signed_triple(name: &str, secret: &str, expires_in: i64) -> Triple {
    let expiry = unix_now().saturating_add_signed(expires_in);
    let (initiator, target) = (
        format!("initiator@a.example/{name}"),
        "target@b.example/res".to_owned(),
    );
    let nonce = format!("nonce-{name}").replace(|c: char| !c.is_ascii_alphanumeric(), "-");
    let key = sign(secret.as_bytes(), expiry, &nonce, &initiator, &target).unwrap();
    Triple::new(key, initiator, target).unwrap()
}

/// The Redis key of a registration (default prefix).
pub fn reg_key(t: &Triple) -> String {
    format!("dtcp:reg:{}", t.registration_id())
}

/// `t`'s record value naming `node_id` at `addr` as its owner, sealed as a
/// node holding `secret` would seal it.
pub fn sealed_record(secret: &str, t: &Triple, node_id: &str, addr: &str) -> String {
    let secrets = Secrets::new([secret]);
    let id = t.registration_id();
    let parts: [&[u8]; 4] = [
        b"dtcp-record-v2",
        id.as_bytes(),
        node_id.as_bytes(),
        addr.as_bytes(),
    ];
    let mac = secrets.mac(&parts).unwrap();
    format!("{node_id} {addr} {}", URL_SAFE_NO_PAD.encode(mac))
}

/// What a fake node received from one Bridge call.
#[derive(Debug, Clone)]
pub struct Captured {
    /// The request's path.
    pub path: String,
    /// Its headers, as sent.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The request body's bytes received before the call was dropped.
    pub body: Vec<u8>,
}

impl Captured {
    /// Whether `needle` occurs anywhere in what was received.
    pub fn contains(&self, needle: &[u8]) -> bool {
        let found = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        found(self.path.as_bytes())
            || self
                .headers
                .iter()
                .any(|(k, v)| found(k.as_bytes()) || found(v))
            || found(&self.body)
    }
}

/// A listener posing as a node: accepts one HTTP/2 connection and records
/// its first request (headers and the body's first bytes), within `limit`.
pub async fn capture_one(listener: TcpListener, limit: Duration) -> Option<Captured> {
    let work = async {
        // A node dials a lane beside its Bridge call (docs/PROTOCOL.md
        // section 7); the lane stays silent until an owner offers it a
        // token, which a trap never does. The call is the connection that
        // starts with the HTTP/2 preface.
        let tcp = loop {
            let (tcp, _) = listener.accept().await.ok()?;
            let mut first = [0u8; 1];
            let peeked = tokio::time::timeout(Duration::from_millis(300), tcp.peek(&mut first));
            if let Ok(Ok(1)) = peeked.await
                && first[0] == b'P'
            {
                break tcp;
            }
        };
        let mut conn = h2::server::handshake(tcp).await.ok()?;
        let (request, _respond) = conn.accept().await?.ok()?;
        // Keep the connection driven while the body is read.
        tokio::spawn(async move { while conn.accept().await.is_some() {} });
        let (parts, mut body) = request.into_parts();
        let mut got = Vec::new();
        // The open frame comes first and is small; a short wait is enough.
        while let Ok(Some(Ok(chunk))) =
            tokio::time::timeout(Duration::from_millis(500), body.data()).await
        {
            let _ = body.flow_control().release_capacity(chunk.len());
            got.extend_from_slice(&chunk);
        }
        Some(Captured {
            path: parts.uri.path().to_owned(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect(),
            body: got,
        })
    };
    tokio::time::timeout(limit, work).await.ok().flatten()
}

/// Replays a captured call against the node whose plane is at `addr`, with
/// `body` as its request body; returns the `grpc-status` the node answered
/// (0 is success).
pub async fn replay(addr: SocketAddr, captured: &Captured, body: Vec<u8>) -> String {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut request = http::Request::post(format!("http://{addr}{}", captured.path));
    for (k, v) in &captured.headers {
        request = request.header(k.as_str(), v.as_slice());
    }
    let (response, mut send) = client
        .send_request(request.body(()).unwrap(), false)
        .unwrap();
    send.send_data(Bytes::from(body), false).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("the owner node answered")
        .unwrap();
    let status = |h: &http::HeaderMap| h.get("grpc-status").map(|v| v.to_str().unwrap().to_owned());
    if let Some(s) = status(response.headers()) {
        return s;
    }
    let mut body = response.into_body();
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(2), body.data()).await {}
    match tokio::time::timeout(Duration::from_secs(2), body.trailers()).await {
        Ok(Ok(Some(t))) => status(&t).unwrap_or_default(),
        _ => "no status: the call stayed open".to_owned(),
    }
}

/// A self-signed certificate for the plane, shared by every node (its name
/// the nodes' default), written with its key to a directory named by
/// `tag`: that directory (the test removes it) and the paths of the two
/// PEM files.
pub fn plane_certificate(tag: &str) -> (std::path::PathBuf, String, String) {
    let dir = std::env::temp_dir().join(format!("dtcp-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["dtcp-relay".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let path = |p: std::path::PathBuf| p.to_str().unwrap().to_owned();
    (dir, path(cert_file), path(key_file))
}
