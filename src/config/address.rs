//! Addresses in settings: where a listener binds, and which networks are trusted.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// A CIDR block; a bare address means that address alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Network(IpNet);

impl Network {
    /// Whether `ip` lies inside the block.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.0.contains(ip)
    }
}

impl TryFrom<String> for Network {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        let text = value.trim();
        text.parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            .map(Self)
            .map_err(|_| {
                format!("{value:?} is not a CIDR block (e.g. 10.0.0.0/8) or an IP address")
            })
    }
}

impl From<Network> for String {
    fn from(network: Network) -> Self {
        network.0.to_string()
    }
}

/// A listen address: an IP address and a port, never a host name to resolve.
pub(super) fn socket_address<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.trim().parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not an IP address and port, such as \"127.0.0.1:8080\" or \
             \"[::1]:8080\" (host names are not resolved)"
        ))
    })
}

/// A list from a file, or a comma-separated string from an environment
/// variable. (The config crate's own list parsing would also turn every
/// all-digit value, such as a digest, into a number.)
pub(super) fn list_or_commas<'de, D>(deserializer: D) -> Result<Vec<Network>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Networks;

    impl<'de> serde::de::Visitor<'de> for Networks {
        type Value = Vec<Network>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of CIDR blocks, or one comma-separated string of them")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
            text.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| Network::try_from(item.to_owned()).map_err(E::custom))
                .collect()
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut networks = Vec::new();
            while let Some(network) = seq.next_element::<Network>()? {
                networks.push(network);
            }
            Ok(networks)
        }
    }

    deserializer.deserialize_any(Networks)
}

#[cfg(test)]
mod tests {
    use crate::config::Settings;
    use crate::config::test_support::env;

    #[test]
    fn proxies_from_env_may_be_empty_or_single() {
        let s =
            Settings::load_from(None, env(&[("MPC_GATEWAY__AUTH__TRUSTED_PROXIES", "")])).unwrap();
        assert!(s.auth.trusted_proxies.is_empty());
        let s = Settings::load_from(
            None,
            env(&[("MPC_GATEWAY__AUTH__TRUSTED_PROXIES", "192.0.2.7")]),
        )
        .unwrap();
        assert_eq!(s.auth.trusted_proxies.len(), 1);
    }
}
