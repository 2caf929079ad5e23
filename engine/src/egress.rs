//! The egress policy on the data plane's connections: an HTTP client whose resolver checks every
//! address it hands out (and refuses redirects), and a check of the other clients' addresses
//! where they are built. The policy itself is `keystone_control::egress`.

use keystone_control::egress::{EgressDenied, EgressPolicy};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

/// Resolves names as the system does, then refuses the name if any address is denied.
struct PolicyResolver(Arc<EgressPolicy>);

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for a in &addrs {
                policy.check(&host, a.ip(), None)?;
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// An HTTP client for team-declared endpoints: every resolved address checked, no redirects
/// (a redirect could point anywhere), no proxy from the environment.
pub fn http_client(policy: &Arc<EgressPolicy>, timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(PolicyResolver(policy.clone())))
        .build()
}

/// Checks a URL whose host is an address: the client's resolver never sees those.
pub fn check_url(policy: &EgressPolicy, url: &str) -> Result<(), EgressDenied> {
    let Ok(u) = reqwest::Url::parse(url) else { return Ok(()) };
    match u.host() {
        Some(url::Host::Ipv4(ip)) => policy.check(&ip.to_string(), IpAddr::V4(ip), u.port_or_known_default()),
        Some(url::Host::Ipv6(ip)) => policy.check(&ip.to_string(), IpAddr::V6(ip), u.port_or_known_default()),
        _ => Ok(()),
    }
}

/// Resolves `host:port` (blocking, as a client's own resolver would) and checks every address;
/// returns them. A name that does not resolve gives no address and no error: the client's own
/// connection attempt then fails as it would.
pub fn checked_addrs(policy: &EgressPolicy, host: &str, port: u16) -> Result<Vec<SocketAddr>, EgressDenied> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => (bare, port).to_socket_addrs().map(|a| a.collect()).unwrap_or_default(),
    };
    for a in &addrs {
        policy.check(host, a.ip(), Some(port))?;
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_client_refuses_denied_names_and_addresses_and_redirects() {
        let policy = Arc::new(EgressPolicy::default());
        assert!(check_url(&policy, "http://127.0.0.1:9/x").is_err());
        assert!(check_url(&policy, "http://[::1]:9/x").is_err());
        assert!(check_url(&policy, "http://169.254.169.254/latest/meta-data/").is_err());
        let client = http_client(&policy, Duration::from_secs(5)).unwrap();
        let e = client.get("http://localhost:9/").send().await.unwrap_err();
        assert!(format!("{e:?}").contains("loopback addresses are denied"), "{e:?}");
        assert!(checked_addrs(&policy, "localhost", 5432).is_err());
        let open = EgressPolicy::new(&["127.0.0.1".into()], &[], false).unwrap();
        assert_eq!(checked_addrs(&open, "127.0.0.1", 5432).unwrap().len(), 1);
    }
}
