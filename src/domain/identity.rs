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

/// What a route lets its caller do; an API key may hold only some.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Checking labels: the label and `batch/status` routes.
    Status,
    /// Requesting action codes: `retrieve` and `batch/retrieve`.
    Retrieve,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Self; 2] = [Self::Status, Self::Retrieve];

    /// The name in `[[auth.keys]] scopes` and in the `required_scope` member.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Retrieve => "retrieve",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Self::Status => 1,
            Self::Retrieve => 2,
        }
    }
}

/// The scopes a caller holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    /// Every scope: trusted-header and anonymous users, and keys by default.
    pub const ALL: Self = Self(3);

    /// Exactly `scopes`.
    pub fn of(scopes: impl IntoIterator<Item = Scope>) -> Self {
        Self(scopes.into_iter().fold(0, |bits, scope| bits | scope.bit()))
    }

    /// Whether `scope` is among them.
    pub fn allows(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }
}

/// A caller, resolved once per request; the rest of the code trusts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    user: Arc<str>,
    tier: Arc<Tier>,
    source: IdentitySource,
    scopes: Scopes,
}

impl Identity {
    /// A caller known as `user`, in `tier`, identified by `source`, holding every scope.
    pub fn new(user: Arc<str>, tier: Arc<Tier>, source: IdentitySource) -> Self {
        Self {
            user,
            tier,
            source,
            scopes: Scopes::ALL,
        }
    }

    /// The same caller, holding only `scopes`.
    pub fn with_scopes(self, scopes: Scopes) -> Self {
        Self { scopes, ..self }
    }

    /// Whether the caller may use a route that needs `scope`.
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.allows(scope)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_hold_what_they_were_given() {
        assert!(Scope::ALL.iter().all(|scope| Scopes::ALL.allows(*scope)));
        assert_eq!(Scopes::of(Scope::ALL), Scopes::ALL);
        let status = Scopes::of([Scope::Status]);
        assert!(status.allows(Scope::Status));
        assert!(!status.allows(Scope::Retrieve));
        assert!(!Scopes::of([]).allows(Scope::Status));
        assert_eq!(
            Scopes::of([Scope::Retrieve, Scope::Retrieve]),
            Scopes::of([Scope::Retrieve])
        );
    }
}
