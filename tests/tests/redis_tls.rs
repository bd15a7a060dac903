//! The rendezvous store over TLS, as a managed Redis offers it: a server
//! certificate of its own CA and client certificates required
//! (`tls-auth-clients yes`). Nodes given the CA and a client certificate
//! pair across each other; a node without a client certificate does not
//! start, and says why.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dtcp_client::{Initiator, Target};
use dtcp_tests::testkit::{Output, Process};
use dtcp_tests::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio::io::AsyncWriteExt;

fn write(dir: &Path, file: &str, pem: &str) -> String {
    let path = dir.join(file);
    std::fs::write(&path, pem).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_pair_over_rediss_with_client_certificates() {
    let d: PathBuf = std::env::temp_dir().join(format!("dtcp-redis-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Not rcgen's default name, which every certificate carries: OpenSSL
    // would take a certificate named as its issuer for a self-signed one.
    ca.distinguished_name
        .push(DnType::CommonName, "dtcp test Redis CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let issue = |names: Vec<String>, name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (
            write(&d, &format!("{name}.crt"), &cert.pem()),
            write(&d, &format!("{name}.key"), &key.serialize_pem()),
        )
    };
    let ca_file = write(&d, "ca.crt", &ca.pem());
    let server = issue(vec!["127.0.0.1".into(), "localhost".into()], "server");
    let client = issue(vec!["dtcp-relay".into()], "client");
    let tls_port = free_port();
    let tls_port_arg = tls_port.to_string();
    // The plain port stays for the harness's own readiness check.
    let _redis = RedisServer::start_with(
        free_port(),
        &[
            "--tls-port",
            &tls_port_arg,
            "--tls-cert-file",
            &server.0,
            "--tls-key-file",
            &server.1,
            "--tls-ca-cert-file",
            &ca_file,
            "--tls-auth-clients",
            "yes",
        ],
    );
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let tls = [
        "--redis-ca",
        ca_file.as_str(),
        "--redis-client-cert",
        client.0.as_str(),
        "--redis-client-key",
        client.1.as_str(),
    ];
    let a = cluster_node(std::slice::from_ref(&url), &tls);
    let b = cluster_node(std::slice::from_ref(&url), &tls);
    a.wait_for("dtcp_nodes_alive", 2.0).await;
    let t = triple("over-rediss");
    let i = tokio::spawn({
        let (t, addr) = (t.clone(), a.addr);
        async move { Initiator::connect(addr, &t).await }
    });
    let mut target = Target::connect(b.addr, &t).await.expect("target paired");
    let mut initiator = i.await.unwrap().expect("initiator paired");
    initiator.write_all(b"via rediss").await.unwrap();
    assert_eq!(read_n(&mut target, 10).await, b"via rediss");

    // No client certificate: the server refuses the handshake, and the
    // node exits at start naming the cause rather than run unable to pair.
    let mut bare = Process::new(
        bin("dtcp-relay"),
        [
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--forward-listen",
            "127.0.0.1:0",
            "--insecure-plane",
            "--redis-url",
            &url,
            "--redis-ca",
            &ca_file,
        ],
    )
    .name("relay")
    .stderr(Output::Lines);
    bare.spawn();
    let status = bare
        .wait_exit(Duration::from_secs(15))
        .expect("a node without a client certificate kept running");
    let stderr = bare.lines().all().join("\n");
    assert!(!status.success());
    assert!(
        stderr.contains("Redis refused this node's TLS"),
        "unclear error: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&d);
}
