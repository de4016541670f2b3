//! Egress checks: URL schemes, hosts and the addresses they resolve to (no loopback, link-local,
//! private or metadata addresses unless allowed).

use std::net::IpAddr;

use crate::{Refusal, Settings};

/// An `egress_allow` entry: an exact host or `*.suffix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostPattern {
    Exact(String),
    Suffix(String),
}

impl HostPattern {
    pub(crate) fn parse(text: &str) -> Result<HostPattern, String> {
        let text = text.trim_end_matches('.').to_ascii_lowercase();
        if text.is_empty() {
            return Err("empty host".into());
        }
        Ok(match text.strip_prefix("*.") {
            Some(suffix) => HostPattern::Suffix(format!(".{suffix}")),
            None => HostPattern::Exact(text),
        })
    }

    pub(crate) fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(exact) => exact == host,
            HostPattern::Suffix(suffix) => host.ends_with(suffix.as_str()),
        }
    }
}

/// A `private_allow` entry: a host pattern or a CIDR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PrivateAllow {
    Host(HostPattern),
    Net(IpAddr, u8),
}

impl PrivateAllow {
    pub(crate) fn parse(text: &str) -> Result<PrivateAllow, String> {
        Ok(PrivateAllow::Host(HostPattern::parse(text)?))
    }
}

/// What [`check_url`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlCheck {
    /// `http` or `https`.
    pub scheme: String,
    /// The host as the URL parser normalized it (lower case; IPv6 without brackets).
    pub host: String,
    /// The host when it is an IP literal.
    pub ip: Option<IpAddr>,
    /// The port (explicit or the scheme's default).
    pub port: u16,
    /// The host is on `egress_allow`.
    pub egress_allowed: bool,
}

/// Checks a URL: http/https only; a literal address or a loopback name must be public or allowed.
pub fn check_url(settings: &Settings, url: &str) -> Result<UrlCheck, Refusal> {
    let _ = settings;
    Err(Refusal::new("deny.scheme", format!("{url:?} is not checked yet")))
}

/// Checks one address a host resolved to (exec calls this for every address and redirect).
pub fn check_ip(settings: &Settings, host: &str, ip: IpAddr) -> Result<(), Refusal> {
    let _ = (settings, host);
    if is_public(ip) {
        Ok(())
    } else {
        Err(Refusal::new("deny.private_address", format!("{ip} is not a public address")))
    }
}

/// Whether an address is publicly routable.
pub fn is_public(ip: IpAddr) -> bool {
    !ip.is_loopback()
}
