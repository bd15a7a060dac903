//! TLS on the forwarding plane: one certificate shared by all nodes, and
//! mutual TLS with a CA, where a node without a CA-signed certificate
//! cannot bridge.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dtcp_client::{Initiator, Target};
use dtcp_tests::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::io::AsyncWriteExt;

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
