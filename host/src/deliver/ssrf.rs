//! Which addresses a client may be delivered to (server-side request forgery).
//!
//! The guard sits in the DNS resolver, so the addresses checked are the ones
//! connected to (no gap for DNS rebinding); IP-literal URLs, which never reach a
//! resolver, are checked before sending. Loopback, private, link-local (cloud
//! metadata lives at 169.254.169.254), shared and reserved ranges are refused
//! unless `allow_private_networks` or `allowed_networks` open them.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::config::Delivery;

/// Which addresses a client may be delivered to.
#[derive(Debug, Clone)]
pub struct AddressPolicy {
    allow_private: bool,
    allowed: Vec<IpNet>,
}

impl AddressPolicy {
    pub fn new(d: &Delivery) -> AddressPolicy {
        AddressPolicy {
            allow_private: d.allow_private_networks,
            allowed: d.allowed_networks.clone(),
        }
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.allow_private || is_global(ip) || self.allowed.iter().any(|n| n.contains(&ip))
    }
}

/// Whether `ip` is an ordinary public address: not loopback, private, link-local
/// (cloud metadata lives at 169.254.169.254), shared, multicast or reserved.
fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10, carrier-grade NAT
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24, protocol assignments
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15, benchmarking
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x64 && s[1] == 0xff9b)) // NAT64, may reach private IPv4
        }
    }
}

/// Resolves names and drops the addresses the policy refuses.
pub struct GuardedResolver {
    pub policy: AddressPolicy,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| policy.allows(a.ip()))
                .collect();
            if allowed.is_empty() && !addrs.is_empty() {
                return Err(Box::new(Blocked(format!(
                    "{host} resolves only to private or reserved addresses ({}); allow them with \
                     allow_private_networks or allowed_networks",
                    addrs
                        .iter()
                        .map(|a| a.ip().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Blocked(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy() {
        let strict = AddressPolicy {
            allow_private: false,
            allowed: vec![],
        };
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "169.254.169.254",
            "192.168.1.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "100.64.0.1",
            "0.0.0.0",
        ] {
            assert!(!strict.allows(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "2606:2800:220:1:248:1893:25c8:1946",
            "8.8.8.8",
        ] {
            assert!(strict.allows(ip.parse().unwrap()), "{ip}");
        }
        let lo = AddressPolicy {
            allow_private: false,
            allowed: vec!["127.0.0.0/8".parse().unwrap()],
        };
        assert!(lo.allows("127.0.0.1".parse().unwrap()));
        assert!(lo.allows("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!lo.allows("10.0.0.1".parse().unwrap()));
    }
}
