//! The machine's own addresses, for an Initiator that listens on `auto`.

use std::io;
use std::net::IpAddr;

/// The machine's own addresses to listen on for `auto`: every address of an
/// interface that is up, except loopback, wildcard, multicast and IPv6
/// link-local ones (those need a zone, which a candidate cannot carry);
/// IPv4 first, then IPv6, each in the system's order.
pub fn interface_addrs() -> io::Result<Vec<IpAddr>> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for iface in if_addrs::get_if_addrs()? {
        let ip = iface.ip();
        if iface.is_loopback() || ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
            continue;
        }
        if !iface.is_oper_up() {
            continue;
        }
        match ip {
            IpAddr::V4(_) => v4.push(ip),
            IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80 => {}
            IpAddr::V6(_) => v6.push(ip),
        }
    }
    v4.extend(v6);
    let mut seen = std::collections::HashSet::new();
    v4.retain(|ip| seen.insert(*ip));
    Ok(v4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_addrs_are_never_loopback() {
        for ip in interface_addrs().unwrap() {
            assert!(!ip.is_loopback() && !ip.is_unspecified(), "{ip}");
        }
    }
}
