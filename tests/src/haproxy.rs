//! A real HAProxy in TCP mode in front of a node, sending the PROXY
//! protocol (Debian package `haproxy`; scripts/test installs it), and
//! PROXY protocol headers written by hand for the bad cases.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use dtcp_testkit::Process;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UnixStream};

use crate::redis::free_port;

/// How long HAProxy may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long [`Haproxy::start`] waits for each connection that checks
/// whether it listens.
const PROBE: Duration = Duration::from_millis(20);
/// Connections HAProxy takes at once (the tests hold a few hundred).
const MAX_CONN: usize = 4096;
/// HAProxy's stats socket, in its directory.
const STATS_SOCKET: &str = "stats.sock";

/// Which PROXY protocol header HAProxy sends to the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    /// `send-proxy`: the text header.
    V1,
    /// `send-proxy-v2`: the binary header.
    V2,
}

/// A running `haproxy` process, killed when dropped.
#[derive(Debug)]
pub struct Haproxy {
    process: Process,
    /// Where clients connect (127.0.0.1, a free port).
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Haproxy {
    /// Starts HAProxy on a free loopback port, forwarding every connection
    /// to `backend` with a PROXY protocol header of `version`.
    pub fn start(backend: SocketAddr, version: ProxyVersion) -> Haproxy {
        let send = match version {
            ProxyVersion::V1 => "send-proxy",
            ProxyVersion::V2 => "send-proxy-v2",
        };
        Haproxy::spawn("", &format!("  server relay {backend} {send}\n"))
    }

    /// Starts HAProxy on a free loopback port, handing connections to
    /// `backends` in turn (`balance roundrobin`, on one thread so that the
    /// turn is strict: consecutive connections reach different nodes),
    /// without a PROXY protocol header.
    pub fn round_robin(backends: &[SocketAddr]) -> Haproxy {
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, b)| format!("  server relay{i} {b}\n"))
            .collect();
        Haproxy::spawn(
            "  nbthread 1\n",
            &format!("  balance roundrobin\n{servers}"),
        )
    }

    /// Starts HAProxy on a free loopback port, handing connections to the
    /// nodes in turn (as [`Haproxy::round_robin`]) while each is healthy:
    /// each `(client, metrics)` pair is checked on the metrics port's
    /// `/readyz` every 100 ms and leaves the rotation at its first failed
    /// check (a draining node answers 503), and a connection to a node that
    /// refuses it is dispatched to another. The servers are named `relay0`,
    /// `relay1`, ... for [`Haproxy::server_up`].
    pub fn round_robin_checked(nodes: &[(SocketAddr, SocketAddr)]) -> Haproxy {
        let servers: String = nodes
            .iter()
            .enumerate()
            .map(|(i, (addr, metrics))| {
                let port = metrics.port();
                format!("  server relay{i} {addr} check port {port} inter 100ms fall 1 rise 1\n")
            })
            .collect();
        Haproxy::spawn(
            "  nbthread 1\n",
            &format!(
                "  balance roundrobin\n  retries 3\n  option redispatch 1\n  timeout check 1s\n\
                 option httpchk\n  http-check send meth GET uri /readyz\n\
                 http-check expect status 200\n{servers}"
            ),
        )
    }

    /// Whether HAProxy counts server `name` (of the `relays` backend) as up,
    /// from its stats socket.
    pub async fn server_up(&self, name: &str) -> bool {
        let Ok(mut socket) = UnixStream::connect(self.dir.join(STATS_SOCKET)).await else {
            return false;
        };
        if socket.write_all(b"show stat\n").await.is_err() {
            return false;
        }
        let mut csv = String::new();
        let read = tokio::time::timeout(START_TIMEOUT, socket.read_to_string(&mut csv)).await;
        if !matches!(read, Ok(Ok(_))) {
            return false;
        }
        // `# pxname,svname,...`: the status is the 18th column.
        csv.lines().any(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            fields.len() > 17 && fields[0] == "relays" && fields[1] == name && fields[17] == "UP"
        })
    }

    fn spawn(global: &str, backend: &str) -> Haproxy {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("dtcp-haproxy-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let stats = dir.join(STATS_SOCKET);
        let config = format!(
            "global\n  maxconn {MAX_CONN}\n  stats socket {}\n{global}\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n\
             frontend clients\n  bind 127.0.0.1:{port}\n  default_backend relays\n\
             backend relays\n{backend}",
            stats.display()
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let mut process =
            Process::new("haproxy", ["-db".as_ref(), "-f".as_ref(), path.as_os_str()]);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        process.start(START_TIMEOUT, || {
            std::net::TcpStream::connect_timeout(&addr, PROBE).is_ok()
        });
        Haproxy { process, addr, dir }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.process.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `n`th loopback source address a test client may bind to:
/// 127.0.0.2 for 0, then 127.0.0.3, ... (every 127.0.0.0/8 address is
/// loopback on Linux). Up to about 16 million.
pub fn loopback_source(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 2)) + n))
}

/// Connects to `addr` from `source` (any port).
pub async fn connect_from(source: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind a loopback source address");
    socket.connect(addr).await.expect("connect")
}

/// A PROXY protocol version 1 header for a TCP4 client `client`.
pub fn proxy_v1(client: SocketAddr, to: SocketAddr) -> Vec<u8> {
    format!(
        "PROXY TCP4 {} {} {} {}\r\n",
        client.ip(),
        to.ip(),
        client.port(),
        to.port()
    )
    .into_bytes()
}

/// The signature every PROXY protocol version 2 header begins with.
pub const PROXY_V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A PROXY protocol version 2 `PROXY` header for a TCP over IPv4 client.
pub fn proxy_v2(client: SocketAddr, to: SocketAddr) -> Vec<u8> {
    let (IpAddr::V4(c), IpAddr::V4(t)) = (client.ip(), to.ip()) else {
        panic!("IPv4 addresses only");
    };
    let mut h = PROXY_V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&c.octets());
    h.extend_from_slice(&t.octets());
    h.extend_from_slice(&client.port().to_be_bytes());
    h.extend_from_slice(&to.port().to_be_bytes());
    h
}

/// A PROXY protocol version 2 `LOCAL` header (a balancer's health check).
pub fn proxy_v2_local() -> Vec<u8> {
    let mut h = PROXY_V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x20, 0x00, 0, 0]);
    h
}
