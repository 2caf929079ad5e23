//! Where the platform may connect on a team's behalf (sinks, alert webhooks): an egress policy
//! checked against every resolved address, at declaration and on every connection, so a sink
//! cannot reach the host's loopback services, the cloud metadata endpoint, or the platform's own
//! database and broker.
//!
//! Order of the checks: the admin's `deny` list, then the admin's `allow` list (which may open
//! anything below it, the platform's own endpoints included: allow narrowly), then the
//! platform's own endpoints, then the built-in denials (loopback, link-local with
//! 169.254.169.254, unspecified, multicast, broadcast, and private ranges unless allowed).

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// One entry of an allow or deny list: a network (`10.0.0.0/8`, `127.0.0.1`) or a host name
/// (`search.internal`, or `*.internal` for every name under it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetRule {
    Net(IpNet),
    Host(String),
    Suffix(String),
}

impl NetRule {
    pub fn parse(s: &str) -> Result<NetRule, String> {
        let s = s.trim().to_ascii_lowercase();
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(NetRule::Net(net));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(NetRule::Net(IpNet::from(ip)));
        }
        let name = s.strip_prefix("*.");
        let host = name.unwrap_or(&s);
        let valid = !host.is_empty()
            && host.split('.').all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        match (valid, name) {
            (false, _) => Err(format!("{s:?} is neither a network (10.0.0.0/8), an address nor a host name")),
            (true, Some(suffix)) => Ok(NetRule::Suffix(suffix.to_owned())),
            (true, None) => Ok(NetRule::Host(s)),
        }
    }

    fn matches(&self, host: &str, ip: IpAddr) -> bool {
        match self {
            NetRule::Net(net) => net.contains(&ip),
            NetRule::Host(h) => host.eq_ignore_ascii_case(h),
            NetRule::Suffix(s) => {
                let host = host.to_ascii_lowercase();
                host.strip_suffix(s.as_str()).is_some_and(|rest| rest.ends_with('.'))
            }
        }
    }
}

/// Why a connection is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{host} ({ip}) is not a destination sinks may reach: {why}")]
pub struct EgressDenied {
    pub host: String,
    pub ip: IpAddr,
    pub why: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    allow: Vec<NetRule>,
    deny: Vec<NetRule>,
    allow_private: bool,
    /// The platform's own database and brokers, as resolved at start-up.
    platform: Vec<SocketAddr>,
}

impl EgressPolicy {
    /// A policy from the settings' lists; an entry that does not parse is named.
    pub fn new(allow: &[String], deny: &[String], allow_private: bool) -> Result<EgressPolicy, String> {
        let parse = |list: &[String], what: &str| {
            list.iter()
                .map(|s| NetRule::parse(s).map_err(|e| format!("egress.{what}: {e}")))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(EgressPolicy { allow: parse(allow, "allow")?, deny: parse(deny, "deny")?, allow_private, platform: vec![] })
    }

    /// Also refuses these addresses (the platform's own database and brokers).
    pub fn protecting(mut self, platform: impl IntoIterator<Item = SocketAddr>) -> EgressPolicy {
        self.platform.extend(platform);
        self
    }

    /// Checks one resolved address of `host`; `port` is `None` where the caller cannot tell
    /// (an HTTP client's resolver): the platform's hosts are then refused on every port.
    pub fn check(&self, host: &str, ip: IpAddr, port: Option<u16>) -> Result<(), EgressDenied> {
        let ip = canonical(ip);
        let deny = |why: &str| Err(EgressDenied { host: host.to_owned(), ip, why: why.to_owned() });
        if self.deny.iter().any(|r| r.matches(host, ip)) {
            return deny("denied by the platform's egress.deny setting");
        }
        if self.allow.iter().any(|r| r.matches(host, ip)) {
            return Ok(());
        }
        if self.platform.iter().any(|p| canonical(p.ip()) == ip && port.is_none_or(|port| port == p.port())) {
            return deny("it is the platform's own database or broker");
        }
        if let Some(why) = builtin_denial(ip, self.allow_private) {
            return deny(why);
        }
        Ok(())
    }
}

/// An IPv4 address written as IPv6 (`::ffff:127.0.0.1`) is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn builtin_denial(ip: IpAddr, allow_private: bool) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_denial(v4, allow_private),
        IpAddr::V6(v6) => v6_denial(v6, allow_private),
    }
}

fn v4_denial(ip: Ipv4Addr, allow_private: bool) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback addresses are denied (egress.allow can open one)")
    } else if ip.is_link_local() {
        Some("link-local addresses (including the cloud metadata service) are denied")
    } else if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || a == 0 {
        Some("not a unicast address")
    } else if !allow_private && (ip.is_private() || (a == 100 && (64..128).contains(&b))) {
        Some("private networks are denied (egress.allow_private or egress.allow can open them)")
    } else {
        None
    }
}

fn v6_denial(ip: Ipv6Addr, allow_private: bool) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("loopback addresses are denied (egress.allow can open one)")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local addresses are denied")
    } else if ip.is_unspecified() || ip.is_multicast() {
        Some("not a unicast address")
    } else if !allow_private && first & 0xfe00 == 0xfc00 {
        Some("private networks are denied (egress.allow_private or egress.allow can open them)")
    } else {
        None
    }
}

/// The hosts and ports a sink's settings would connect to (`host`, port if the settings say),
/// for the declaration-time check. `secrets` matter for a PostgreSQL URL.
pub fn sink_destinations(
    settings: &crate::SinkSettings,
    secrets: &std::collections::BTreeMap<String, String>,
) -> Vec<(String, Option<u16>)> {
    use crate::SinkSettings;
    let of_url = |u: &str| {
        url::Url::parse(u).ok().and_then(|u| {
            let host = u.host_str()?.trim_start_matches('[').trim_end_matches(']').to_owned();
            Some((host, u.port_or_known_default()))
        })
    };
    match settings {
        SinkSettings::Http(s) => of_url(&s.url).into_iter().collect(),
        SinkSettings::File(s) => s.bucket.as_ref().and_then(|b| of_url(b.endpoint.as_deref()?)).into_iter().collect(),
        SinkSettings::Postgres(_) => {
            secrets.get("url").and_then(|u| of_url(u)).map(|(h, p)| (h, p.or(Some(5432)))).into_iter().collect()
        }
        SinkSettings::Kafka(s) => {
            s.brokers.split(',').filter_map(|hp| of_url(&format!("kafka://{}", hp.trim()))).collect()
        }
        SinkSettings::Stream(_) => Vec::new(),
    }
}

/// The setting or secret that names a sink kind's destination, for errors.
pub fn destination_field(kind: crate::SinkKind) -> &'static str {
    use crate::SinkKind;
    match kind {
        SinkKind::Http => "settings.url",
        SinkKind::File => "settings.endpoint",
        SinkKind::Postgres => "secrets.url",
        SinkKind::Kafka => "settings.brokers",
        SinkKind::Stream => "settings.stream",
    }
}

#[cfg(feature = "store")]
/// Resolves each destination and checks every address it resolves to. A name that does not
/// resolve now passes (it is checked again on every connection); one address denied refuses
/// the whole name, so a name cannot mix a public address with a private one.
pub async fn check_destinations(
    policy: &EgressPolicy,
    destinations: &[(String, Option<u16>)],
) -> Result<(), EgressDenied> {
    for (host, port) in destinations {
        for ip in resolve(host, port.unwrap_or(0)).await {
            policy.check(host, ip, *port)?;
        }
    }
    Ok(())
}

#[cfg(feature = "store")]
/// The addresses of `host` (itself if it is one); none if it does not resolve within 5 s.
pub async fn resolve(host: &str, port: u16) -> Vec<IpAddr> {
    if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        return vec![ip];
    }
    let lookup = tokio::net::lookup_host((host, port));
    match tokio::time::timeout(std::time::Duration::from_secs(5), lookup).await {
        Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
        _ => Vec::new(),
    }
}

/// `value` with the password of every URL in it hidden (a comma-separated broker list holds
/// several), or `None` when it holds none.
pub fn without_url_password(value: &str) -> Option<String> {
    let mut changed = false;
    let parts: Vec<String> = value
        .split(',')
        .map(|part| match url::Url::parse(part.trim()) {
            Ok(mut u) if u.password().is_some() => {
                changed = true;
                let _ = u.set_password(Some("****"));
                u.to_string()
            }
            _ => part.to_owned(),
        })
        .collect();
    changed.then(|| parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_hidden_for_display() {
        assert_eq!(
            without_url_password("https://bot:s3cret@hooks.example.com/x?a=1").as_deref(),
            Some("https://bot:****@hooks.example.com/x?a=1")
        );
        assert_eq!(without_url_password("https://hooks.example.com/x"), None);
        assert_eq!(without_url_password("plays"), None);
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_defaults_refuse_loopback_metadata_and_private_ranges() {
        let p = EgressPolicy::default();
        for bad in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "169.254.169.254",
            "0.0.0.0",
            "10.1.2.3",
            "192.168.1.1",
            "172.20.0.1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "100.64.0.1",
            "224.0.0.1",
        ] {
            assert!(p.check("h", ip(bad), Some(80)).is_err(), "{bad} should be refused");
        }
        assert!(p.check("example.com", ip("93.184.216.34"), Some(443)).is_ok());
        let open = EgressPolicy::new(&[], &[], true).unwrap();
        assert!(open.check("db", ip("10.1.2.3"), Some(5432)).is_ok());
        assert!(open.check("h", ip("169.254.169.254"), Some(80)).is_err(), "metadata stays closed");
    }

    #[test]
    fn deny_beats_allow_and_allow_beats_the_defaults() {
        let p = EgressPolicy::new(&["127.0.0.1".into(), "*.internal".into()], &["bad.internal".into()], false)
            .unwrap()
            .protecting([SocketAddr::new(ip("10.0.0.5"), 5432)]);
        assert!(p.check("localhost", ip("127.0.0.1"), Some(9)).is_ok());
        assert!(p.check("x", ip("127.0.0.2"), Some(9)).is_err());
        assert!(p.check("search.internal", ip("10.9.9.9"), Some(9200)).is_ok());
        assert!(p.check("bad.internal", ip("10.9.9.9"), Some(9200)).is_err());
        let own = EgressPolicy::new(&[], &[], true).unwrap().protecting([SocketAddr::new(ip("10.0.0.5"), 5432)]);
        let e = own.check("db", ip("10.0.0.5"), Some(5432)).unwrap_err();
        assert!(e.to_string().contains("platform's own"), "{e}");
        assert!(own.check("db", ip("10.0.0.5"), Some(9200)).is_ok(), "another port of that host");
        assert!(own.check("db", ip("10.0.0.5"), None).is_err(), "an unknown port is the platform's");
        assert!(EgressPolicy::new(&["not a net/x".into()], &[], false).unwrap_err().contains("egress.allow"));
    }

    #[test]
    fn destinations_come_from_each_kind_of_sink() {
        use crate::{SinkKind, SinkSettings};
        let map = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let typed = |kind, kv: &[(&str, &str)]| SinkSettings::parse(kind, &map(kv)).unwrap();
        let none = map(&[]);
        let http = sink_destinations(&typed(SinkKind::Http, &[("url", "http://127.0.0.1:8080/x")]), &none);
        assert_eq!(http, vec![("127.0.0.1".to_string(), Some(8080))]);
        let kafka = typed(SinkKind::Kafka, &[("brokers", "a:9092, [::1]:9093"), ("topic", "t")]);
        assert_eq!(
            sink_destinations(&kafka, &none),
            vec![("a".to_string(), Some(9092)), ("::1".to_string(), Some(9093))]
        );
        let s3 = typed(SinkKind::File, &[("path", "p"), ("store_url", "s3://b"), ("endpoint", "http://minio:9000")]);
        assert_eq!(sink_destinations(&s3, &none), vec![("minio".to_string(), Some(9000))]);
        let pg_settings = typed(SinkKind::Postgres, &[("table", "t")]);
        let pg = sink_destinations(&pg_settings, &map(&[("url", "postgres://u:p@db.x/y")]));
        assert_eq!(pg, vec![("db.x".to_string(), Some(5432))]);
    }
}
