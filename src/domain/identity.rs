//! Who is asking, once the edge has found out: a user, their quota tier,
//! and how they were identified.

use std::sync::Arc;

use crate::quota::Tier;

/// How the caller was identified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentitySource {
    /// A configured API key.
    ApiKey,
    /// The trusted proxy's user header.
    TrustedHeader,
    /// No credentials; known by peer address.
    Anonymous,
}

impl IdentitySource {
    /// The name used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ApiKey => "api_key",
            Self::TrustedHeader => "trusted_header",
            Self::Anonymous => "anonymous",
        }
    }
}

/// A caller, resolved once per request; the rest of the code trusts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    user: Arc<str>,
    tier: Arc<Tier>,
    source: IdentitySource,
}

impl Identity {
    /// A caller known as `user`, in `tier`, identified by `source`.
    pub fn new(user: Arc<str>, tier: Arc<Tier>, source: IdentitySource) -> Self {
        Self { user, tier, source }
    }

    /// The user's name (`anonymous:<ip>` for anonymous callers).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The user's name, shared (for records that outlive the request).
    pub fn shared_user(&self) -> Arc<str> {
        Arc::clone(&self.user)
    }

    /// The user's quota tier.
    pub fn tier(&self) -> &Tier {
        &self.tier
    }

    /// How the user was identified.
    pub fn source(&self) -> IdentitySource {
        self.source
    }
}
