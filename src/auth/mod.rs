//! The Authenticator: who is asking, from an API key (digest, constant-time
//! compare), a user header from a trusted SSO proxy, or the address of an
//! anonymous caller. Resolved once per request.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{self, HeaderMap, HeaderName};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{AuthSettings, DEFAULT_TIER, KeyScope, Network, QuotaSettings};
use crate::domain::identity::{Identity, IdentitySource, Scope, Scopes};
use crate::quota::{Limit, Tier};

/// Prefix of generated keys, so a leaked one is recognisable in a scan.
pub const KEY_PREFIX: &str = "mpcgw_";

/// Room for `anonymous:` and any address, IPv6 with an IPv4 tail included.
const ANONYMOUS_CAPACITY: usize = 64;

/// Longest user name accepted from the trusted header.
const MAX_USER_NAME: usize = 128;

/// The lowercase hex SHA-256 digest of a key, as `[[auth.keys]] sha256` holds it.
pub fn key_digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new random API key with 256 bits of entropy.
pub fn generate_key() -> String {
    let mut bytes = [0_u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{KEY_PREFIX}{}", hex::encode(bytes))
}

/// Why a caller could not be identified; shown to the caller as a 401.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No key, no trusted header, and anonymous access is off.
    #[error("no credentials: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")]
    NoCredentials,
    /// A key that matches no configured digest.
    #[error("the API key is not known to this gateway")]
    UnknownKey,
    /// An Authorization header that is not `Bearer <key>`.
    #[error("the Authorization header must be 'Bearer <key>'")]
    UnsupportedScheme,
    /// The trusted proxy sent an unusable user name.
    #[error("the trusted proxy's user header is empty, too long or not printable text")]
    BadUserHeader,
}

struct KnownKey {
    digest: DigestWords,
    user: Arc<str>,
    tier: Arc<Tier>,
    scopes: Scopes,
}

impl fmt::Debug for KnownKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KnownKey")
            .field("user", &self.user)
            .field("tier", &self.tier.name)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// Resolves callers to identities according to `[auth]` and `[quota]`.
#[derive(Debug)]
pub struct Authenticator {
    keys: Vec<KnownKey>,
    trusted_header: Option<HeaderName>,
    trusted_proxies: Vec<Network>,
    allow_anonymous: bool,
    default_tier: Arc<Tier>,
    user_tiers: HashMap<String, Arc<Tier>>,
}

impl Authenticator {
    /// Builds the authenticator from checked settings.
    pub fn new(auth: &AuthSettings, quota: &QuotaSettings) -> Self {
        let tiers: HashMap<&str, Arc<Tier>> = quota
            .tiers
            .iter()
            .map(|(name, t)| {
                let tier = Tier::new(
                    name,
                    Limit::per_minute(t.requests_per_minute),
                    Limit::new(
                        t.upstream_per_hour,
                        Duration::from_secs(3600),
                        t.upstream_burst,
                    ),
                );
                (name.as_str(), Arc::new(tier))
            })
            .collect();
        // Settings checking guarantees every named tier exists.
        let tier = |name: &str| tiers.get(name).or(tiers.get(DEFAULT_TIER)).cloned();
        let default_tier = tier(DEFAULT_TIER).unwrap_or_else(|| {
            Arc::new(Tier::new(
                DEFAULT_TIER,
                Limit::per_minute(1.try_into().expect("1 is not zero")),
                Limit::per_minute(1.try_into().expect("1 is not zero")),
            ))
        });
        let keys = auth
            .keys
            .iter()
            .map(|entry| KnownKey {
                digest: DigestWords::from(entry.sha256.as_bytes()),
                user: entry.user.as_str().into(),
                tier: tier(&entry.tier).unwrap_or_else(|| default_tier.clone()),
                scopes: scopes_of(&entry.scopes),
            })
            .collect();
        let user_tiers = quota
            .users
            .iter()
            .map(|(user, name)| {
                let tier = tier(name).unwrap_or_else(|| default_tier.clone());
                (user.clone(), tier)
            })
            .collect();
        Self {
            keys,
            trusted_header: auth.trusted_user_header.get().cloned(),
            trusted_proxies: auth.trusted_proxies.clone(),
            allow_anonymous: auth.allow_anonymous,
            default_tier,
            user_tiers,
        }
    }

    /// Identifies the caller from its headers and peer address.
    pub fn identify(
        &self,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<Identity, AuthError> {
        // A key decides whenever one is presented, header or not.
        if let Some(key) = presented_key(headers)? {
            return self.by_key(key);
        }
        if let (Some(name), Some(peer)) = (&self.trusted_header, peer)
            && let Some(value) = headers.get(name)
            && self.trusted_proxies.iter().any(|net| net.contains(&peer))
        {
            let user = value
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|u| !u.is_empty() && u.len() <= MAX_USER_NAME)
                .ok_or(AuthError::BadUserHeader)?;
            return Ok(self.named(user, IdentitySource::TrustedHeader));
        }
        if self.allow_anonymous {
            // Formatted on the stack: `anonymous:` and at most 45 bytes of address.
            let mut text = [0_u8; ANONYMOUS_CAPACITY];
            let mut rest = &mut text[..];
            let written = match peer {
                Some(ip) => write!(rest, "anonymous:{ip}"),
                None => write!(rest, "anonymous:unknown"),
            };
            let len = ANONYMOUS_CAPACITY - rest.len();
            let user = std::str::from_utf8(&text[..len])
                .ok()
                .filter(|_| written.is_ok())
                .unwrap_or("anonymous:unknown");
            return Ok(self.named(user, IdentitySource::Anonymous));
        }
        Err(AuthError::NoCredentials)
    }

    fn by_key(&self, key: &str) -> Result<Identity, AuthError> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let digest = DigestWords::from(&digest);
        // Compare against every key, matched or not, each in constant time.
        let mut matched = None;
        for known in &self.keys {
            if bool::from(known.digest.ct_eq(&digest)) {
                matched = Some(known);
            }
        }
        let known = matched.ok_or(AuthError::UnknownKey)?;
        Ok(Identity::new(
            known.user.clone(),
            known.tier.clone(),
            IdentitySource::ApiKey,
        )
        .with_scopes(known.scopes))
    }

    fn named(&self, user: &str, source: IdentitySource) -> Identity {
        let tier = self
            .user_tiers
            .get(user)
            .unwrap_or(&self.default_tier)
            .clone();
        Identity::new(user.into(), tier, source)
    }
}

/// The scopes `[[auth.keys]] scopes` names.
fn scopes_of(names: &[KeyScope]) -> Scopes {
    Scopes::of(names.iter().map(|name| match name {
        KeyScope::Status => Scope::Status,
        KeyScope::Retrieve => Scope::Retrieve,
    }))
}

/// A SHA-256 digest as four words, compared in constant time a word at a time.
#[derive(Clone, Copy)]
struct DigestWords([u64; 4]);

impl From<&[u8; 32]> for DigestWords {
    fn from(bytes: &[u8; 32]) -> Self {
        let mut words = [0_u64; 4];
        for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut buf = [0_u8; 8];
            buf.copy_from_slice(chunk);
            *word = u64::from_le_bytes(buf);
        }
        Self(words)
    }
}

impl ConstantTimeEq for DigestWords {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        // Branch-free: fold every difference into one word, then one comparison.
        let difference = self
            .0
            .iter()
            .zip(other.0.iter())
            .fold(0_u64, |acc, (a, b)| acc | (a ^ b));
        difference.ct_eq(&0)
    }
}

/// The token of an `Authorization: Bearer <token>` header, if that is what was sent.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The key from `Authorization: Bearer` or `X-API-Key`, if any was sent.
fn presented_key(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    if headers.contains_key(header::AUTHORIZATION) {
        return bearer_token(headers)
            .map(Some)
            .ok_or(AuthError::UnsupportedScheme);
    }
    match headers.get("x-api-key") {
        Some(value) => value
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|key| !key.is_empty())
            .map(Some)
            .ok_or(AuthError::UnknownKey),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use actix_web::http::header::HeaderValue;

    const KEY: &str = "mpcgw_test_key";

    fn authenticator(extra: &str) -> Authenticator {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        let contents = format!(
            "[auth]\nallow_anonymous = false\ntrusted_user_header = \"X-Forwarded-User\"\n\
             trusted_proxies = [\"10.0.0.0/8\"]\n\
             [[auth.keys]]\nuser = \"alice\"\nsha256 = \"{}\"\ntier = \"ops\"\n\
             [quota.tiers.ops]\nrequests_per_minute = 5\nupstream_per_hour = 20\nupstream_burst = 4\n\
             [quota.users]\ncarol = \"ops\"\n{extra}",
            key_digest(KEY)
        );
        std::io::Write::write_all(&mut file, contents.as_bytes()).unwrap();
        let settings = Settings::load_from(Some(file.path()), Some(HashMap::new())).unwrap();
        Authenticator::new(&settings.auth, &settings.quota)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    const PROXY: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 2, 3)));
    const OUTSIDER: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)));

    #[test]
    fn digest_is_lowercase_sha256_hex() {
        assert_eq!(
            key_digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn generated_keys_are_distinct_and_prefixed() {
        let (a, b) = (generate_key(), generate_key());
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX));
        assert_eq!(a.len(), KEY_PREFIX.len() + 64);
    }

    #[test]
    fn bearer_and_x_api_key_both_identify() {
        let auth = authenticator("");
        for h in [
            headers(&[("authorization", &format!("Bearer {KEY}"))]),
            headers(&[("authorization", &format!("bearer {KEY}"))]),
            headers(&[("x-api-key", KEY)]),
        ] {
            let identity = auth.identify(&h, OUTSIDER).unwrap();
            assert_eq!(identity.user(), "alice");
            assert_eq!(&*identity.tier().name, "ops");
            assert_eq!(identity.source(), IdentitySource::ApiKey);
        }
    }

    #[test]
    fn unknown_or_malformed_credentials_are_refused() {
        let auth = authenticator("");
        let cases = [
            (
                headers(&[("authorization", "Bearer wrong")]),
                AuthError::UnknownKey,
            ),
            (headers(&[("x-api-key", "wrong")]), AuthError::UnknownKey),
            (headers(&[("x-api-key", "")]), AuthError::UnknownKey),
            (
                headers(&[("authorization", "Basic YWxpY2U6eA==")]),
                AuthError::UnsupportedScheme,
            ),
            (
                headers(&[("authorization", "Bearer")]),
                AuthError::UnsupportedScheme,
            ),
            (headers(&[]), AuthError::NoCredentials),
        ];
        for (h, expected) in cases {
            assert_eq!(auth.identify(&h, OUTSIDER), Err(expected), "{h:?}");
        }
    }

    #[test]
    fn the_user_header_counts_only_from_trusted_proxies() {
        let auth = authenticator("");
        let h = headers(&[("x-forwarded-user", "carol")]);
        let identity = auth.identify(&h, PROXY).unwrap();
        assert_eq!(identity.user(), "carol");
        assert_eq!(
            &*identity.tier().name,
            "ops",
            "quota.users gives carol her tier"
        );
        assert_eq!(identity.source(), IdentitySource::TrustedHeader);

        let dave = auth
            .identify(&headers(&[("x-forwarded-user", "dave")]), PROXY)
            .unwrap();
        assert_eq!(&*dave.tier().name, "default");

        assert_eq!(auth.identify(&h, OUTSIDER), Err(AuthError::NoCredentials));
        assert_eq!(auth.identify(&h, None), Err(AuthError::NoCredentials));
        assert_eq!(
            auth.identify(&headers(&[("x-forwarded-user", " ")]), PROXY),
            Err(AuthError::BadUserHeader)
        );
    }

    #[test]
    fn a_key_decides_over_the_user_header() {
        let auth = authenticator("");
        let h = headers(&[("x-forwarded-user", "carol"), ("x-api-key", KEY)]);
        assert_eq!(auth.identify(&h, PROXY).unwrap().user(), "alice");
        let h = headers(&[("x-forwarded-user", "carol"), ("x-api-key", "wrong")]);
        assert_eq!(auth.identify(&h, PROXY), Err(AuthError::UnknownKey));
    }

    #[test]
    fn anonymous_callers_are_known_by_address() {
        let auth = authenticator("");
        let mut settings = Settings::load_from(None, Some(HashMap::new())).unwrap();
        settings.auth.allow_anonymous = true;
        let open = Authenticator::new(&settings.auth, &settings.quota);
        let identity = open.identify(&headers(&[]), OUTSIDER).unwrap();
        assert_eq!(identity.user(), "anonymous:192.0.2.1");
        assert_eq!(identity.source(), IdentitySource::Anonymous);
        let longest: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
            .parse()
            .unwrap();
        assert_eq!(
            open.identify(&headers(&[]), Some(longest)).unwrap().user(),
            format!("anonymous:{longest}")
        );
        assert_eq!(
            open.identify(&headers(&[]), None).unwrap().user(),
            "anonymous:unknown"
        );
        assert_eq!(&*identity.tier().name, "default");
        assert_eq!(
            open.identify(&headers(&[("x-api-key", "wrong")]), OUTSIDER),
            Err(AuthError::UnknownKey),
            "a wrong key is never downgraded to anonymous"
        );
        assert_eq!(
            auth.identify(&headers(&[]), OUTSIDER),
            Err(AuthError::NoCredentials)
        );
    }

    #[test]
    fn keys_hold_their_scopes_and_others_hold_both() {
        let auth = authenticator(&format!(
            "[[auth.keys]]\nuser = \"dash\"\nsha256 = \"{}\"\nscopes = [\"status\"]\n",
            key_digest("mpcgw_dashboard")
        ));
        let dash = auth
            .identify(&headers(&[("x-api-key", "mpcgw_dashboard")]), OUTSIDER)
            .unwrap();
        assert!(dash.allows(Scope::Status));
        assert!(!dash.allows(Scope::Retrieve));
        let alice = auth
            .identify(&headers(&[("x-api-key", KEY)]), OUTSIDER)
            .unwrap();
        assert!(
            Scope::ALL.iter().all(|scope| alice.allows(*scope)),
            "the default is both"
        );
        let carol = auth
            .identify(&headers(&[("x-forwarded-user", "carol")]), PROXY)
            .unwrap();
        assert!(Scope::ALL.iter().all(|scope| carol.allows(*scope)));
    }

    #[test]
    fn digests_differing_in_any_byte_are_unequal() {
        let base = [7_u8; 32];
        let words = DigestWords::from(&base);
        assert!(bool::from(words.ct_eq(&DigestWords::from(&base))));
        for index in 0..32 {
            let mut other = base;
            other[index] ^= 0x80;
            assert!(
                !bool::from(words.ct_eq(&DigestWords::from(&other))),
                "byte {index}"
            );
        }
    }

    #[test]
    fn debug_output_holds_no_digest() {
        let auth = authenticator("");
        let text = format!("{auth:?}");
        assert!(!text.contains(&key_digest(KEY)), "{text}");
    }
}
