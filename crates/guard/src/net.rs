//! Egress checks: URL schemes, hosts and the addresses they resolve to (no loopback, link-local,
//! private or metadata addresses unless `private_allow` names them).
//!
//! URLs are parsed with the WHATWG parser of the `url` crate, the one exec's HTTP client uses, so
//! both agree on the host; it reads `http://2130706433/`, `http://0x7f.1/` and
//! `http://017700000001/` as 127.0.0.1, like browsers and curl do.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{Refusal, Settings};

/// Host names of cloud metadata services (their addresses are link-local or private anyway).
const METADATA_HOSTS: [&str; 5] = [
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
];

/// An `egress_allow` entry: an exact host or `*.suffix` (any name under the suffix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostPattern {
    Exact(String),
    Suffix(String),
}

/// Lower case, without a trailing dot.
fn normalize_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

impl HostPattern {
    pub(crate) fn parse(text: &str) -> Result<HostPattern, String> {
        let text = normalize_host(text.trim());
        let name = text.strip_prefix("*.").unwrap_or(&text);
        if name.is_empty() {
            return Err("empty host".into());
        }
        if name.contains(['*', '/', ':', '@', ' ']) && name.parse::<Ipv6Addr>().is_err() {
            return Err("expected a host name (example.com) or *.suffix".into());
        }
        Ok(match text.strip_prefix("*.") {
            Some(suffix) => HostPattern::Suffix(format!(".{suffix}")),
            None => HostPattern::Exact(text),
        })
    }

    pub(crate) fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(exact) => exact == host,
            HostPattern::Suffix(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
        }
    }
}

/// A `private_allow` entry: a host pattern, an address or a CIDR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PrivateAllow {
    Host(HostPattern),
    Net(IpAddr, u8),
}

impl PrivateAllow {
    pub(crate) fn parse(text: &str) -> Result<PrivateAllow, String> {
        let text = text.trim();
        if let Some((address, prefix)) = text.split_once('/') {
            let ip: IpAddr = address
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .map_err(|_| format!("{address:?} is not an IP address"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = prefix
                .parse()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("prefix length must be 0..={max}"))?;
            return Ok(PrivateAllow::Net(canonical_ip(ip), prefix));
        }
        if let Ok(ip) = text.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            let ip = canonical_ip(ip);
            return Ok(PrivateAllow::Net(ip, if ip.is_ipv4() { 32 } else { 128 }));
        }
        Ok(PrivateAllow::Host(HostPattern::parse(text)?))
    }

    fn allows(&self, host: &str, ip: Option<IpAddr>) -> bool {
        match (self, ip) {
            (PrivateAllow::Host(pattern), _) => pattern.matches(host),
            (PrivateAllow::Net(net, prefix), Some(ip)) => in_net(ip, *net, *prefix),
            (PrivateAllow::Net(..), None) => false,
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (canonical_ip(ip), net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// What [`check_url`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlCheck {
    /// `http` or `https`.
    pub scheme: String,
    /// The host as the URL parser normalized it (lower case, no trailing dot; IPv6 without
    /// brackets). exec resolves this and passes every address to [`check_ip`].
    pub host: String,
    /// The host when it is an IP literal.
    pub ip: Option<IpAddr>,
    /// The port (explicit or the scheme's default).
    pub port: u16,
    /// The host is on `egress_allow`.
    pub egress_allowed: bool,
}

/// Checks a URL: http or https only; a host that is a literal address must be public, and
/// `localhost`, `*.localhost` and metadata host names are refused, unless `private_allow` names
/// them.
pub fn check_url(settings: &Settings, url: &str) -> Result<UrlCheck, Refusal> {
    let parsed = url::Url::parse(url.trim())
        .map_err(|e| Refusal::new("invalid_params", format!("url {url:?} is not a valid URL: {e}")))?;
    let scheme = parsed.scheme();
    if scheme != "http" && scheme != "https" {
        return Err(Refusal::new(
            "deny.scheme",
            format!("url {url:?} uses the {scheme}: scheme; only http and https are allowed"),
        ));
    }
    let (host, ip) = match parsed.host() {
        Some(url::Host::Domain(domain)) => (normalize_host(domain), None),
        Some(url::Host::Ipv4(v4)) => (v4.to_string(), Some(IpAddr::V4(v4))),
        Some(url::Host::Ipv6(v6)) => (v6.to_string(), Some(IpAddr::V6(v6))),
        None => return Err(Refusal::new("invalid_params", format!("url {url:?} has no host"))),
    };
    match ip {
        Some(ip) => check_ip(settings, &host, ip).map_err(|refusal| Refusal {
            reason: format!("url {url:?} points at {}", refusal.reason),
            ..refusal
        })?,
        None => {
            let loopback = host == "localhost" || host.ends_with(".localhost");
            let metadata = METADATA_HOSTS.contains(&host.as_str());
            if (loopback || metadata) && !private_allowed(settings, &host, None) {
                let what = if loopback {
                    "a loopback name"
                } else {
                    "a cloud metadata service"
                };
                return Err(Refusal::new(
                    "deny.private_address",
                    format!("url {url:?} names {host}, {what}; add it to policy.private_allow to reach it"),
                ));
            }
        }
    }
    let egress_allowed = settings.egress_allow.iter().any(|pattern| pattern.matches(&host));
    Ok(UrlCheck {
        scheme: scheme.to_owned(),
        port: parsed
            .port_or_known_default()
            .unwrap_or(if scheme == "https" { 443 } else { 80 }),
        host,
        ip,
        egress_allowed,
    })
}

fn private_allowed(settings: &Settings, host: &str, ip: Option<IpAddr>) -> bool {
    let host = normalize_host(host);
    settings.private_allow.iter().any(|entry| entry.allows(&host, ip))
}

/// Checks one address a host resolved to (exec calls this for every address it would connect to,
/// redirects included): public, or allowed by `private_allow` (by host or by CIDR).
pub fn check_ip(settings: &Settings, host: &str, ip: IpAddr) -> Result<(), Refusal> {
    if is_public(ip) || private_allowed(settings, host, Some(ip)) {
        return Ok(());
    }
    let shown = if host == ip.to_string() {
        ip.to_string()
    } else {
        format!("{host} ({ip})")
    };
    Err(Refusal::new(
        "deny.private_address",
        format!(
            "{shown} is {}, not a public address; add it to policy.private_allow to reach it",
            kind(ip)
        ),
    ))
}

/// What kind of non-public address this is, for reasons.
fn kind(ip: IpAddr) -> &'static str {
    let ip = canonical_ip(ip);
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() => "a loopback address",
        IpAddr::V6(v6) if v6.is_loopback() => "a loopback address",
        IpAddr::V4(v4) if v4.octets()[..2] == [169, 254] => "a link-local address (cloud metadata lives there)",
        IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => "a link-local address",
        IpAddr::V4(v4) if v4.is_private() => "a private address",
        IpAddr::V6(v6) if v6.segments()[0] & 0xfe00 == 0xfc00 => "a private (unique local) address",
        IpAddr::V4(v4) if v4.octets()[0] == 100 && v4.octets()[1] & 0xc0 == 64 => "a carrier-grade NAT address",
        _ if ip.is_unspecified() => "the unspecified address",
        _ if ip.is_multicast() => "a multicast address",
        _ => "a reserved or special-purpose address",
    }
}

/// Whether an address is publicly routable: false for loopback, link-local (169.254/16,
/// fe80::/10), private (10/8, 172.16/12, 192.168/16, fc00::/7), CGNAT (100.64/10), unspecified,
/// `0.0.0.0/8`, multicast, broadcast and reserved (240/4), documentation and benchmarking ranges,
/// and IPv6 forms that embed such an IPv4 address (mapped, compatible, NAT64, 6to4).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_public(v4),
        IpAddr::V6(v6) => v6_public(v6),
    }
}

fn v4_public(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0
        || a == 10
        || a == 127
        || (a == 169 && b == 254)
        || (a == 172 && b & 0xf0 == 16)
        || (a == 192 && b == 168)
        || (a == 100 && b & 0xc0 == 64)
        || (a == 192 && b == 0 && c == 0)
        || (a == 192 && b == 0 && c == 2)
        || (a == 192 && b == 88 && c == 99)
        || (a == 198 && b & 0xfe == 18)
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
        || a >= 224)
}

fn v6_public(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_public(v4);
    }
    let s = ip.segments();
    let embedded = |high: u16, low: u16| {
        let [a, b] = high.to_be_bytes();
        let [c, d] = low.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    if s[..6] == [0; 6] {
        // ::, ::1 and the deprecated IPv4-compatible ::a.b.c.d.
        return !ip.is_unspecified() && !ip.is_loopback() && v4_public(embedded(s[6], s[7]));
    }
    if s[0] == 0x64 && s[1] == 0xff9b {
        // NAT64: 64:ff9b::/96 embeds the IPv4 address; 64:ff9b:1::/48 is for local use.
        return s[2..6] == [0; 4] && v4_public(embedded(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        // 6to4 embeds the IPv4 address of the relay.
        return v4_public(embedded(s[1], s[2]));
    }
    let documentation = (s[0] == 0x2001 && s[1] == 0x0db8) || (s[0] == 0x3fff && s[1] & 0xf000 == 0);
    let teredo = s[0] == 0x2001 && s[1] == 0;
    let benchmarking = s[0] == 0x2001 && s[1] == 0x0002 && s[2] == 0;
    // Only global unicast (2000::/3) is public.
    s[0] & 0xe000 == 0x2000 && !documentation && !teredo && !benchmarking
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn public_and_not() {
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(ip(public)), "{public}");
        }
        for private in [
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "fd00:ec2::254",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2001::1",
            "fec0::1",
        ] {
            assert!(!is_public(ip(private)), "{private}");
        }
    }

    #[test]
    fn nets_and_patterns() {
        assert!(in_net(ip("10.1.2.3"), ip("10.0.0.0"), 8));
        assert!(!in_net(ip("11.1.2.3"), ip("10.0.0.0"), 8));
        assert!(in_net(ip("::ffff:10.1.2.3"), ip("10.0.0.0"), 8));
        assert!(in_net(ip("1.2.3.4"), ip("0.0.0.0"), 0));
        assert!(in_net(ip("fd00::5"), ip("fd00::"), 8));
        let suffix = HostPattern::parse("*.Example.com.").unwrap();
        assert!(suffix.matches("api.example.com"));
        assert!(!suffix.matches("example.com"));
        assert!(!suffix.matches("evilexample.com"));
        assert!(HostPattern::parse("exa mple").is_err());
        assert!(PrivateAllow::parse("10.0.0.0/33").is_err());
        assert_eq!(
            PrivateAllow::parse("10.0.0.0/8"),
            Ok(PrivateAllow::Net(ip("10.0.0.0"), 8))
        );
        assert_eq!(PrivateAllow::parse("[::1]"), Ok(PrivateAllow::Net(ip("::1"), 128)));
    }
}
