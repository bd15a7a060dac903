use super::*;

use dtcp_store::RedisConfig;

#[test]
fn defaults_are_the_documented_ones() {
    let c = Config::try_parse_from(["dtcp-relay"]).unwrap();
    assert_eq!(c.listen, "0.0.0.0:7777".parse().unwrap());
    assert_eq!(c.metrics_listen, "0.0.0.0:9777".parse().unwrap());
    assert_eq!(c.pending_ttl, Duration::from_secs(300));
    assert_eq!(c.connect_grace, Duration::from_secs(5));
    assert_eq!(c.handshake_timeout, Duration::from_secs(10));
    assert_eq!(c.max_connections, 10_000);
    assert_eq!(c.max_pending_per_ip, 100);
    assert_eq!(c.idle_timeout(), Some(Duration::from_secs(300)));
    assert_eq!(c.max_connection_rate_per_ip, NonZeroU32::new(20));
    assert_eq!(c.connection_burst_per_ip, None);
    assert_eq!(c.max_connections_per_ip, 200);
    assert_eq!(c.max_sessions_per_ip, 100);
    assert_eq!(c.ipv6_prefix_len, 64);
    assert!(c.validate().is_ok());
    assert_eq!(c.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.limits(), Limits::default());
    assert_eq!(c.log_format, LogFormat::Text);
    assert!(c.allows("a@anything", "b@else"));
    assert!(!c.signed_keys());
    assert_eq!(c.max_key_lifetime, Duration::from_secs(86_400));
    assert_eq!(c.lane_pool, 0, "no lanes dialed ahead unless asked");
}

#[test]
fn the_lane_pool_is_bounded() {
    let parse = |n: &str| Config::try_parse_from(["dtcp-relay", "--lane-pool", n]);
    assert_eq!(parse("0").unwrap().lane_pool, 0, "0 turns it off");
    let most = dtcp_forward::LANE_POOL_MAX;
    assert_eq!(parse(&most.to_string()).unwrap().lane_pool as usize, most);
    assert!(parse(&(most + 1).to_string()).is_err());
    assert!(parse("-1").is_err());
}

#[test]
fn cluster_mode_needs_a_secret_and_a_dialable_address() {
    let parse = |args: &[&str]| Config::try_parse_from([&["dtcp-relay"], args].concat()).unwrap();
    assert!(!parse(&[]).cluster());
    assert!(parse(&[]).validate().is_ok());
    let no_secret = parse(&[
        "--redis-url",
        "redis://127.0.0.1",
        "--advertise-addr",
        "10.0.0.1:7778",
    ]);
    assert!(no_secret.cluster());
    assert!(
        no_secret
            .validate()
            .unwrap_err()
            .contains("--cluster-secret")
    );
    let insecure = parse(&[
        "--redis-url",
        "redis://127.0.0.1",
        "--insecure-plane",
        "--advertise-addr",
        "10.0.0.1:7778",
    ]);
    assert!(insecure.validate().is_ok());
    let unspecified = parse(&["--redis-url", "redis://127.0.0.1", "--cluster-secret", "s"]);
    assert!(
        unspecified
            .validate()
            .unwrap_err()
            .contains("--advertise-addr")
    );
    let concrete = parse(&[
        "--redis-url",
        "redis://127.0.0.1",
        "--cluster-secret",
        "s",
        "--forward-listen",
        "127.0.0.1:0",
    ]);
    assert!(concrete.validate().is_ok());
    let seeds = parse(&[
        "--redis-url",
        "redis://a:1,redis://b:2",
        "--redis-url",
        "redis://c:3",
    ]);
    assert_eq!(seeds.redis_urls.len(), 3);
    assert!(parse(&["--node-id", "a b"]).validate().is_err());
    let long = "n".repeat(129);
    assert!(
        parse(&["--node-id", long.as_str()]).validate().is_err(),
        "a node id past 128 bytes"
    );
    assert!(parse(&["--node-id", &long[..128]]).validate().is_ok());
    assert!(
        Config::try_parse_from(["dtcp-relay", "--forward-tls-cert", "c.pem"]).is_err(),
        "cert needs a key"
    );
}

#[test]
fn sentinel_flags_and_store_timeouts() {
    let parse = |args: &[&str]| Config::try_parse_from([&["dtcp-relay"], args].concat()).unwrap();
    let defaults = parse(&[]).redis_config().unwrap();
    let store = RedisConfig::default();
    assert_eq!(defaults.connect_timeout, store.connect_timeout);
    assert_eq!(defaults.response_timeout, store.response_timeout);
    assert_eq!(defaults.operation_timeout, store.operation_timeout);
    assert!(defaults.sentinel.is_none());

    let dir = std::env::temp_dir().join(format!("dtcp-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (redis_pw, sentinel_pw) = (dir.join("redis"), dir.join("sentinel"));
    std::fs::write(&redis_pw, "r-secret\n").unwrap();
    std::fs::write(&sentinel_pw, "s-secret").unwrap();
    let c = parse(&[
        "--redis-sentinel",
        "10.0.0.1:26379,10.0.0.2:26379",
        "--redis-sentinel",
        "[::1]:26379",
        "--redis-sentinel-master",
        "mymaster",
        "--redis-password-file",
        redis_pw.to_str().unwrap(),
        "--redis-sentinel-password-file",
        sentinel_pw.to_str().unwrap(),
        "--redis-operation-timeout",
        "2",
        "--redis-response-timeout",
        "0.5",
        "--cluster-secret",
        "s",
        "--advertise-addr",
        "10.0.0.9:7778",
    ]);
    assert!(c.cluster(), "Sentinel is cluster mode");
    assert_eq!(c.validate(), Ok(()));
    let r = c.redis_config().unwrap();
    let s = r.sentinel.as_ref().unwrap();
    assert_eq!(s.master, "mymaster");
    assert_eq!(s.sentinels.len(), 3);
    assert_eq!(s.password.as_deref(), Some("s-secret"));
    assert_eq!(r.password.as_deref(), Some("r-secret"), "newline dropped");
    assert_eq!(r.operation_timeout, Duration::from_secs(2));
    assert_eq!(r.response_timeout, Duration::from_millis(500));
    assert!(
        !format!("{r:?}").contains("secret"),
        "passwords not printed"
    );
    std::fs::write(&redis_pw, "").unwrap();
    assert!(c.redis_config().unwrap_err().contains("empty"));
    std::fs::remove_dir_all(&dir).unwrap();

    let invalid = |args: &[&str], why: &str| {
        let err = parse(args).validate().unwrap_err();
        assert!(err.contains(why), "{args:?}: {err}");
    };
    invalid(&["--redis-sentinel", "a:1"], "--redis-sentinel-master");
    invalid(&["--redis-sentinel-master", "m"], "go together");
    invalid(
        &[
            "--redis-sentinel",
            "a:1",
            "--redis-sentinel-master",
            "m",
            "--redis-url",
            "redis://b",
        ],
        "exclude",
    );
    invalid(
        &["--redis-sentinel", "a", "--redis-sentinel-master", "m"],
        "HOST:PORT",
    );
    invalid(
        &["--redis-sentinel-password", "p"],
        "needs --redis-sentinel",
    );
    invalid(&["--redis-operation-timeout", "0"], "more than 0");
    invalid(
        &[
            "--redis-response-timeout",
            "5",
            "--redis-operation-timeout",
            "3",
        ],
        "bounds",
    );
    assert!(
        Config::try_parse_from([
            "dtcp-relay",
            "--redis-password",
            "p",
            "--redis-password-file",
            "f"
        ])
        .is_err(),
        "a password and its file exclude each other"
    );
}

#[test]
fn domain_policy_needs_one_side_in_the_list() {
    let c = Config::try_parse_from([
        "dtcp-relay",
        "--allow-domain",
        "capulet.lit",
        "--allow-domain",
        "verona.lit",
    ])
    .unwrap();
    assert!(c.allows("romeo@montague.lit/x", "juliet@Capulet.lit"));
    assert!(c.allows("verona.lit", "x@y"));
    assert!(!c.allows("romeo@montague.lit", "tybalt@sub.capulet.lit"));
}

#[test]
fn proxy_protocol_needs_trusted_networks() {
    let parse = |args: &[&str]| Config::try_parse_from([&["dtcp-relay"], args].concat()).unwrap();
    let off = parse(&[]);
    assert!(!off.proxy_protocol);
    assert!(!off.trusts("127.0.0.1".parse().unwrap()));
    let alone = parse(&["--proxy-protocol"]);
    assert!(
        alone
            .validate()
            .unwrap_err()
            .contains("--proxy-protocol-from")
    );
    let from_only = parse(&["--proxy-protocol-from", "10.0.0.0/8"]);
    assert!(from_only.validate().is_err());
    let on = parse(&[
        "--proxy-protocol",
        "--proxy-protocol-from",
        "10.0.0.0/8,192.0.2.1/32",
        "--proxy-protocol-from",
        "2001:db8::/32",
    ]);
    assert!(on.validate().is_ok());
    assert!(on.trusts("10.1.2.3".parse().unwrap()));
    assert!(on.trusts("::ffff:10.1.2.3".parse().unwrap()), "v4-mapped");
    assert!(on.trusts("2001:db8::5".parse().unwrap()));
    assert!(!on.trusts("192.0.2.2".parse().unwrap()));
    assert!(
        Config::try_parse_from(["dtcp-relay", "--proxy-protocol-from", "10.0.0.0/33"]).is_err()
    );
}

#[test]
fn bandwidth_caps_take_units() {
    let parse = |v: &str| {
        Config::try_parse_from(["dtcp-relay", "--max-session-rate", v]).map(|c| c.max_session_rate)
    };
    assert_eq!(parse("10M/s").unwrap(), Some(10_000_000));
    assert_eq!(parse("10MB/s").unwrap(), Some(10_000_000));
    assert_eq!(parse("512Ki/s").unwrap(), Some(512 * 1024));
    assert_eq!(parse("1000").unwrap(), Some(1000));
    for bad in ["0/s", "fast", "10X/s", "-1", "99999999999G/s"] {
        assert!(parse(bad).is_err(), "{bad}");
    }
    let c = Config::try_parse_from(["dtcp-relay", "--max-node-rate", "1G/s"]).unwrap();
    assert_eq!(c.max_node_rate, Some(1_000_000_000));
    assert_eq!(c.max_session_rate, None);
}

#[test]
fn connection_rate_is_per_second() {
    let c = Config::try_parse_from(["dtcp-relay", "--max-connection-rate-per-ip", "20/s"]).unwrap();
    assert_eq!(c.max_connection_rate_per_ip, NonZeroU32::new(20));
    assert!(c.validate().is_ok());
    let bare = Config::try_parse_from(["dtcp-relay", "--max-connection-rate-per-ip", "5"]);
    assert_eq!(bare.unwrap().max_connection_rate_per_ip, NonZeroU32::new(5));
    let off = Config::try_parse_from(["dtcp-relay", "--max-connection-rate-per-ip", "0"]);
    assert_eq!(
        off.unwrap().max_connection_rate_per_ip,
        None,
        "0 is no limit"
    );
    for bad in ["fast", "-1/s", "2/m"] {
        assert!(
            Config::try_parse_from(["dtcp-relay", "--max-connection-rate-per-ip", bad]).is_err(),
            "{bad}"
        );
    }
    let burst_alone = Config::try_parse_from([
        "dtcp-relay",
        "--connection-burst-per-ip",
        "5",
        "--max-connection-rate-per-ip",
        "0/s",
    ])
    .unwrap();
    assert!(burst_alone.validate().is_err());
    let burst = Config::try_parse_from(["dtcp-relay", "--connection-burst-per-ip", "5"]).unwrap();
    assert!(burst.validate().is_ok(), "the default rate is on");
}

#[test]
fn fractional_seconds_and_bad_values() {
    let c = Config::try_parse_from(["dtcp-relay", "--idle-timeout", "1.5", "--listen", "[::1]:0"])
        .unwrap();
    assert_eq!(c.idle_timeout(), Some(Duration::from_millis(1500)));
    assert!(Config::try_parse_from(["dtcp-relay", "--pending-ttl", "soon"]).is_err());
    assert!(Config::try_parse_from(["dtcp-relay", "--pending-ttl", "-1"]).is_err());
}

#[test]
fn redis_certificates_need_rediss() {
    let parse = |args: &[&str]| {
        let base = ["dtcp-relay", "--insecure-plane", "--advertise-addr", "n:1"];
        Config::try_parse_from([&base[..], args].concat()).unwrap()
    };
    let plain = parse(&["--redis-url", "redis://r:6379", "--redis-ca", "ca.pem"]);
    assert!(plain.validate().unwrap_err().contains("rediss://"));
    let tls = parse(&["--redis-url", "rediss://r:6379", "--redis-ca", "ca.pem"]);
    assert_eq!(tls.validate(), Ok(()));
    let sentinel = parse(&[
        "--redis-sentinel",
        "rediss://s:26379",
        "--redis-sentinel-master",
        "m",
        "--redis-client-cert",
        "c.pem",
        "--redis-client-key",
        "k.pem",
    ]);
    assert_eq!(sentinel.validate(), Ok(()));
    assert!(
        Config::try_parse_from(["dtcp-relay", "--redis-client-cert", "c.pem"]).is_err(),
        "a certificate needs its key"
    );
    let unreadable = tls.redis_config().unwrap_err();
    assert!(unreadable.contains("ca.pem"), "{unreadable}");
}

#[test]
fn per_address_shares_and_the_ipv6_prefix() {
    let parse = |args: &[&str]| Config::try_parse_from([&["dtcp-relay"], args].concat());
    let c = parse(&[
        "--max-connections-per-ip",
        "7",
        "--max-sessions-per-ip",
        "3",
        "--ipv6-prefix-len",
        "48",
    ])
    .unwrap();
    assert_eq!(
        (
            c.max_connections_per_ip,
            c.max_sessions_per_ip,
            c.ipv6_prefix_len
        ),
        (7, 3, 48)
    );
    assert!(c.validate().is_ok());
    for bits in ["0", "129", "x"] {
        assert!(parse(&["--ipv6-prefix-len", bits]).is_err(), "{bits}");
    }
    let none = parse(&["--max-connections-per-ip", "0"]).unwrap();
    assert!(
        none.validate().is_err(),
        "a share of 0 would refuse everybody"
    );
    let none = parse(&["--max-sessions-per-ip", "0"]).unwrap();
    assert!(none.validate().is_err());
}

#[test]
fn socks5_needs_the_component_or_an_explicit_flag_in_a_cluster() {
    let parse = |args: &[&str]| Config::try_parse_from([&["dtcp-relay"], args].concat()).unwrap();
    let cluster = [
        "--redis-url",
        "redis://127.0.0.1",
        "--cluster-secret",
        "s",
        "--advertise-addr",
        "10.0.0.1:7778",
    ];
    // Neither a lone node nor a cluster node takes SOCKS5 by default.
    assert!(!parse(&[]).xmpp.serves_socks5());
    let plain = parse(&cluster);
    assert_eq!(plain.validate(), Ok(()));
    assert!(!plain.xmpp.serves_socks5());
    // A cluster node may carry them for a component elsewhere.
    let carrier = parse(&[&cluster[..], &["--accept-socks5"]].concat());
    assert_eq!(carrier.validate(), Ok(()));
    assert!(carrier.xmpp.serves_socks5());
    // Alone it would hold pairs nobody can activate.
    let err = parse(&["--accept-socks5"]).validate().unwrap_err();
    assert!(
        err.contains("--accept-socks5") && err.contains("--redis-url"),
        "{err}"
    );
    let component = [
        "--xmpp-component",
        "proxy.example.org",
        "--xmpp-server",
        "xmpp.internal:5347",
        "--xmpp-secret",
        "s3cret",
        "--socks5-advertise",
        "relay.example.org:7777",
    ];
    let with_component = parse(&component);
    assert_eq!(with_component.validate(), Ok(()));
    assert!(with_component.xmpp.serves_socks5());
    // Redundant beside the component, and harmless.
    let both = parse(&[&component[..], &["--accept-socks5"]].concat());
    assert_eq!(both.validate(), Ok(()));
}

#[test]
fn the_socks5_wait_is_short_and_bounded_by_the_pending_ttl() {
    let parse = |args: &[&str]| Config::try_parse_from([&["dtcp-relay"], args].concat()).unwrap();
    let defaults = parse(&[]);
    assert_eq!(
        defaults.xmpp.socks5_activation_timeout,
        Duration::from_secs(60)
    );
    assert_eq!(defaults.socks5_wait(), Duration::from_secs(60));
    assert!(defaults.socks5_wait() < defaults.pending_ttl);
    let set = parse(&["--socks5-activation-timeout", "2.5"]);
    assert_eq!(set.socks5_wait(), Duration::from_millis(2500));
    // Never past the store record's life.
    let short_ttl = parse(&["--pending-ttl", "1.5"]);
    assert_eq!(short_ttl.socks5_wait(), Duration::from_millis(1500));
    let zero = parse(&["--socks5-activation-timeout", "0"]);
    assert!(
        zero.validate()
            .unwrap_err()
            .contains("--socks5-activation-timeout")
    );
    assert!(Config::try_parse_from(["dtcp-relay", "--socks5-activation-timeout", "x"]).is_err());
}
