//! TLS on the forwarding plane: one certificate shared by all nodes,
//! mutual TLS with a CA, where a node without a CA-signed certificate
//! cannot bridge, and certificates renewed on disk served without a restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dtcp_client::{Initiator, Target};
use dtcp_tests::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SerialNumber};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const NAME: &str = "dtcp-relay";

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dtcp-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(dir: &Path, file: &str, pem: &str) -> String {
    let path = dir.join(file);
    std::fs::write(&path, pem).unwrap();
    path.to_str().unwrap().to_owned()
}

async fn pairs_across(a: &Relay, b: &Relay, name: &str) -> bool {
    let t = triple(name);
    let i = tokio::spawn({
        let (t, addr) = (t.clone(), a.addr);
        async move { Initiator::connect(addr, &t).await }
    });
    let Ok(mut tg) = Target::connect(b.addr, &t).await else {
        return false;
    };
    let mut i = i.await.unwrap().expect("initiator");
    i.write_all(b"over tls").await.unwrap();
    read_n(&mut tg, 8).await == b"over tls"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shared_certificate() {
    let d = dir("shared");
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![NAME.into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert, key) = (
        write(&d, "cert.pem", &cert.pem()),
        write(&d, "key.pem", &key.serialize_pem()),
    );
    let redis = RedisServer::start();
    let tls = [
        "--forward-tls-cert",
        cert.as_str(),
        "--forward-tls-key",
        key.as_str(),
    ];
    let a = cluster_node(&[redis.url()], &tls);
    let b = cluster_node(&[redis.url()], &tls);
    assert!(a.logs().iter().any(|l| l["plane_tls"] == true));
    assert!(pairs_across(&a, &b, "shared-cert").await);
    // A node dialing in plain text cannot bridge to them.
    let plain = NodeOptions::cluster(&[redis.url()])
        .connect_grace(1.0)
        .start();
    assert!(!pairs_across(&a, &plain, "plain-dialer").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_node_the_ca_did_not_sign() {
    let d = dir("mutual");
    let ca_params = {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p
    };
    let ca = CertifiedIssuer::self_signed(ca_params.clone(), KeyPair::generate().unwrap()).unwrap();
    let rogue_ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let node_cert = |issuer: &CertifiedIssuer<'_, KeyPair>, name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![NAME.into()])
            .unwrap()
            .signed_by(&key, issuer)
            .unwrap();
        (
            write(&d, &format!("{name}.pem"), &cert.pem()),
            write(&d, &format!("{name}.key"), &key.serialize_pem()),
        )
    };
    let ca_file = write(&d, "ca.pem", &ca.pem());
    let redis = RedisServer::start();
    let node = |cert: &(String, String), ca: &str, extra: &[&str]| {
        let mut args = vec![
            "--forward-tls-cert",
            &cert.0,
            "--forward-tls-key",
            &cert.1,
            "--forward-tls-ca",
            ca,
        ];
        args.extend(extra);
        cluster_node(&[redis.url()], &args)
    };
    let a = node(&node_cert(&ca, "a"), &ca_file, &[]);
    let b = node(&node_cert(&ca, "b"), &ca_file, &[]);
    assert!(pairs_across(&a, &b, "mutual").await);
    assert!(pairs_across(&b, &a, "mutual-back").await);
    // Signed by another CA, though it trusts ours: A refuses its handshake.
    let rogue = node(
        &node_cert(&rogue_ca, "rogue"),
        &ca_file,
        &["--connect-grace", "1"],
    );
    assert!(!pairs_across(&a, &rogue, "rogue").await);
    eventually(
        Duration::from_secs(5),
        "the rogue's bridge failed",
        || async {
            rogue
                .metric("dtcp_bridge_errors_total{role=\"client\",reason=\"unreachable\"}")
                .await
                >= 1.0
        },
    )
    .await;
}

/// A Kubernetes Secret volume: each file a symlink through `..data`, a
/// symlink to the directory of the current version, swapped in one rename.
struct SecretVolume {
    dir: PathBuf,
    version: usize,
}

impl SecretVolume {
    fn new(dir: PathBuf, files: &[(&str, &str)]) -> Self {
        let mut v = SecretVolume { dir, version: 0 };
        v.publish(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), v.dir.join(name)).unwrap();
        }
        v
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_owned()
    }

    /// Writes a new version and makes it current, as the kubelet does.
    fn publish(&mut self, files: &[(&str, &str)]) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        std::fs::create_dir(self.dir.join(&version)).unwrap();
        for (name, pem) in files {
            std::fs::write(self.dir.join(&version).join(name), pem).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Pki {
            ca: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// A node certificate with this serial: (cert PEM, key PEM, cert DER).
    fn issue(&self, serial: u64) -> (String, String, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![NAME.into()]).unwrap();
        params.serial_number = Some(SerialNumber::from(serial));
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }
}

/// Dials a plane port with a TLS client of the test's own (trusting `pki`'s
/// CA, presenting one of its certificates) and returns the certificate the
/// node served.
async fn served_certificate(plane: SocketAddr, pki: &Pki) -> Option<Vec<u8>> {
    let (cert, key, _) = pki.issue(999);
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.der().clone()).unwrap();
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(plane).await.ok()?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(NAME).unwrap(), tcp)
        .await
        .ok()?;
    Some(tls.get_ref().1.peer_certificates()?[0].to_vec())
}

/// The files of a node's Secret: certificate, key, CA.
fn secret(cert: &(String, String, Vec<u8>), ca: &str) -> Vec<(&'static str, String)> {
    vec![
        ("tls.crt", cert.0.clone()),
        ("tls.key", cert.1.clone()),
        ("ca.crt", ca.to_owned()),
    ]
}

fn refs<'a>(files: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    files.iter().map(|(n, p)| (*n, p.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificates_are_served_without_a_restart() {
    let d = dir("renewal");
    let volume = |name: &str, files: Vec<(&'static str, String)>| {
        let dir = d.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        SecretVolume::new(dir, &refs(&files))
    };
    let pki = Pki::new();
    let ca = pki.ca.pem();
    let (a1, b1) = (pki.issue(1), pki.issue(2));
    let (mut va, mut vb) = (volume("a", secret(&a1, &ca)), volume("b", secret(&b1, &ca)));
    let redis = RedisServer::start();
    let node = |v: &SecretVolume| {
        let (c, k, ca) = (v.path("tls.crt"), v.path("tls.key"), v.path("ca.crt"));
        let args = [
            "--forward-tls-cert",
            c.as_str(),
            "--forward-tls-key",
            k.as_str(),
            "--forward-tls-ca",
            ca.as_str(),
        ];
        cluster_node(&[redis.url()], &args)
    };
    let (a, b) = (node(&va), node(&vb));
    let plane = a.forward.expect("a plane port");
    assert_eq!(served_certificate(plane, &pki).await, Some(a1.2.clone()));
    assert!(pairs_across(&a, &b, "before-renewal").await);
    // Its bytes went on a lane, TLS with the same certificates.
    a.wait_for("dtcp_forwarded_sessions_total{via=\"lane\"}", 1.0)
        .await;

    // A renewal caught half-written: the node keeps serving what it had.
    let half = a1.0[..a1.0.len() / 2].to_owned();
    va.publish(&[("tls.crt", &half), ("tls.key", &a1.1), ("ca.crt", &ca)]);
    eventually(Duration::from_secs(6), "the bad files were refused", || {
        let refused = a.logs().iter().any(|l| {
            l["message"] == "forwarding plane TLS certificates not reloaded; the current ones stay"
        });
        async move { refused }
    })
    .await;
    assert_eq!(served_certificate(plane, &pki).await, Some(a1.2.clone()));
    assert!(pairs_across(&b, &a, "half-written").await);

    // The renewal proper, of both nodes and of their CA: new handshakes of
    // A's server present the new certificate and trust only the new CA, and
    // A's dialer presents its new one to a node that knows nothing older.
    let pki2 = Pki::new();
    let ca2 = pki2.ca.pem();
    let (a2, b2) = (pki2.issue(11), pki2.issue(12));
    va.publish(&refs(&secret(&a2, &ca2)));
    vb.publish(&refs(&secret(&b2, &ca2)));
    eventually(
        Duration::from_secs(6),
        "A serves the renewed certificate",
        || async { served_certificate(plane, &pki2).await == Some(a2.2.clone()) },
    )
    .await;
    assert_eq!(
        served_certificate(plane, &pki).await,
        None,
        "the old CA's certificates are no longer accepted"
    );
    let vc = volume("c", secret(&pki2.issue(13), &ca2));
    let c = node(&vc);
    assert!(pairs_across(&a, &c, "renewed-c-dials-a").await);
    assert!(pairs_across(&c, &a, "renewed-a-dials-c").await);
    assert!(pairs_across(&a, &b, "renewed-b-dials-a").await);
    assert!(pairs_across(&b, &a, "renewed-a-dials-b").await);
    // Lanes attach after the reload too: with the renewed certificates,
    // every session A held the Initiator of went on one, none on a Bridge.
    a.wait_for("dtcp_forwarded_sessions_total{via=\"lane\"}", 3.0)
        .await;
    c.wait_for("dtcp_forwarded_sessions_total{via=\"lane\"}", 1.0)
        .await;
    for node in [&a, &b, &c] {
        assert_eq!(
            node.metric("dtcp_forwarded_sessions_total{via=\"bridge\"}")
                .await,
            0.0
        );
    }
}
