//! Webhook targets and server-side request forgery: a URL is parsed once; at each delivery
//! its host is resolved and every address checked, and the connection goes to the address
//! that was checked (so a DNS answer that changes between the check and the connection
//! cannot point the request at an internal service).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Longest webhook URL accepted.
pub const MAX_URL_BYTES: usize = 2048;

/// A parsed webhook URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `https` (else `http`).
    pub https: bool,
    /// The host as written (a name, or an IP address without brackets).
    pub host: String,
    /// The port.
    pub port: u16,
    /// `host[:port]` for the `Host` header.
    pub authority: String,
    /// Path and query, at least `/`.
    pub path_and_query: String,
}

/// Why a target is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not an absolute `http`/`https` URL with a host.
    #[error(
        "webhook_url must be an absolute http or https URL with a host, without credentials, at most {MAX_URL_BYTES} bytes"
    )]
    Malformed,
    /// The host is, or resolves to, an address webhooks may not reach.
    #[error(
        "webhook_url points at {0}, a loopback, private, link-local, multicast or unspecified address; webhooks go to public addresses only"
    )]
    Forbidden(IpAddr),
    /// The host does not resolve.
    #[error("webhook_url's host {0} does not resolve")]
    Unresolved(String),
}

impl Target {
    /// Parses `url`.
    pub fn parse(url: &str) -> Result<Self, TargetError> {
        if url.len() > MAX_URL_BYTES || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(TargetError::Malformed);
        }
        let uri: axum::http::Uri = url.parse().map_err(|_| TargetError::Malformed)?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(TargetError::Malformed),
        };
        let authority = uri.authority().ok_or(TargetError::Malformed)?;
        if authority.as_str().contains('@') {
            return Err(TargetError::Malformed);
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(TargetError::Malformed);
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path_and_query = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        Ok(Self {
            https,
            host,
            port,
            authority: authority.as_str().to_owned(),
            path_and_query,
        })
    }

    /// Whether the operator's allow-list exempts this host from the address check.
    pub fn allowed(&self, allow_hosts: &[String]) -> bool {
        allow_hosts
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(&self.host))
    }

    /// Refuses an IP-literal host that is forbidden (names are checked at delivery).
    pub fn check_literal(&self, allow_hosts: &[String]) -> Result<(), TargetError> {
        match self.host.parse::<IpAddr>() {
            Ok(ip) if forbidden(ip) && !self.allowed(allow_hosts) => {
                Err(TargetError::Forbidden(ip))
            }
            _ => Ok(()),
        }
    }

    /// Resolves the host and returns the address to connect to: the first one, once every
    /// address the name has passed the check (a name with one internal address among public
    /// ones is refused whole).
    pub async fn resolve(&self, allow_hosts: &[String]) -> Result<SocketAddr, TargetError> {
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|_| TargetError::Unresolved(self.host.clone()))?
            .collect();
        let first = *addresses
            .first()
            .ok_or_else(|| TargetError::Unresolved(self.host.clone()))?;
        if !self.allowed(allow_hosts)
            && let Some(bad) = addresses.iter().find(|a| forbidden(a.ip()))
        {
            return Err(TargetError::Forbidden(bad.ip()));
        }
        Ok(first)
    }
}

/// Whether webhooks may not reach `ip`: loopback, private, link-local, shared (CGNAT),
/// multicast, broadcast, unspecified, documentation and other reserved ranges, and the
/// IPv6 forms that embed such an IPv4 address.
pub fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let segments = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // fc00::/7 unique local, fe80::/10 link-local, fec0::/10 site-local.
                || (segments[0] & 0xfe00) == 0xfc00
                || (segments[0] & 0xffc0) == 0xfe80
                || (segments[0] & 0xffc0) == 0xfec0
                // 64:ff9b::/96 NAT64 and ::/96 IPv4-compatible embed an IPv4 address.
                || (segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
                    && forbidden_v4(embedded_v4(v6)))
                || (segments[..6] == [0, 0, 0, 0, 0, 0] && forbidden_v4(embedded_v4(v6)))
                // 2001:db8::/32 documentation.
                || (segments[0] == 0x2001 && segments[1] == 0x0db8)
        }
    }
}

fn embedded_v4(v6: Ipv6Addr) -> Ipv4Addr {
    let octets = v6.octets();
    Ipv4Addr::new(octets[12], octets[13], octets[14], octets[15])
}

fn forbidden_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_multicast()
        || v4.is_broadcast()
        || v4.is_unspecified()
        || v4.is_documentation()
        || a == 0
        // 100.64.0.0/10 shared address space (carrier-grade NAT).
        || (a == 100 && (64..128).contains(&b))
        // 192.0.0.0/24 protocol assignments, 198.18.0.0/15 benchmarking, 240.0.0.0/4 reserved.
        || (a == 192 && b == 0 && v4.octets()[2] == 0)
        || (a == 198 && (18..20).contains(&b))
        || a >= 240
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_defaults_and_refuse_the_rest() {
        let target = Target::parse("https://hooks.example.com/in?x=1").expect("valid");
        assert_eq!(
            (
                target.https,
                target.host.as_str(),
                target.port,
                target.path_and_query.as_str()
            ),
            (true, "hooks.example.com", 443, "/in?x=1")
        );
        let target = Target::parse("http://[2001:4860::8888]:8080").expect("valid");
        assert_eq!(
            (
                target.host.as_str(),
                target.port,
                target.path_and_query.as_str()
            ),
            ("2001:4860::8888", 8080, "/")
        );
        for bad in [
            "ftp://example.com/",
            "example.com/hook",
            "https://user:pw@example.com/",
            "https:///path",
            "http://exa mple.com/",
            &format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES)),
        ] {
            assert_eq!(Target::parse(bad), Err(TargetError::Malformed), "{bad}");
        }
    }

    #[test]
    fn internal_addresses_are_forbidden_public_ones_not() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "ff02::1",
        ] {
            assert!(forbidden(ip.parse().expect("ip")), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
        ] {
            assert!(!forbidden(ip.parse().expect("ip")), "{ip}");
        }
    }

    #[tokio::test]
    async fn names_are_checked_after_resolution_unless_allowed() {
        let target = Target::parse("http://localhost:9/hook").expect("valid");
        assert!(matches!(
            target.resolve(&[]).await,
            Err(TargetError::Forbidden(_))
        ));
        let allowed = target
            .resolve(&["localhost".to_owned()])
            .await
            .expect("allowed by the operator");
        assert!(allowed.ip().is_loopback());
        let literal = Target::parse("http://169.254.169.254/latest/meta-data").expect("valid");
        assert!(literal.check_literal(&[]).is_err());
        assert!(
            literal
                .check_literal(&["169.254.169.254".to_owned()])
                .is_ok()
        );
    }
}
