//! Secrets in settings: key digests, parsed once and never shown.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

/// A SHA-256 digest of an API key; a secret, so never shown.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl TryFrom<String> for KeyDigest {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        let mut bytes = [0_u8; 32];
        // The value is a secret: say what is wrong with it, never what it is.
        hex::decode_to_slice(value.trim(), &mut bytes)
            .map(|()| Self(bytes))
            .map_err(|_| "must be 64 hexadecimal digits (a SHA-256 digest)".to_owned())
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyDigest(<redacted>)")
    }
}

impl Serialize for KeyDigest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

/// What secrets are shown as.
pub const REDACTED: &str = "<redacted>";

/// A secret's digest, or none when configured as `""`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct OptionalDigest(Option<KeyDigest>);

impl OptionalDigest {
    /// The digest, when one is configured.
    pub fn get(&self) -> Option<&KeyDigest> {
        self.0.as_ref()
    }
}

impl TryFrom<String> for OptionalDigest {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        if value.trim().is_empty() {
            return Ok(Self(None));
        }
        KeyDigest::try_from(value).map(|digest| Self(Some(digest)))
    }
}

impl Serialize for OptionalDigest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(digest) => digest.serialize(serializer),
            None => serializer.serialize_str(""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::config::test_support::{DIGEST, env, file};

    #[test]
    fn digests_never_appear_in_output_or_errors() {
        let f = file(&format!(
            "[[auth.keys]]\nuser = \"alice\"\nsha256 = \"{DIGEST}\"\n"
        ));
        let s = Settings::load_from(Some(f.path()), env(&[])).unwrap();
        let mut s = s;
        s.admin.token_sha256 = DIGEST.to_owned().try_into().unwrap();
        let rendered = s.to_toml();
        assert!(!rendered.contains(DIGEST), "{rendered}");
        assert!(
            rendered.contains("token_sha256 = \"<redacted>\""),
            "{rendered}"
        );
        assert!(rendered.contains(REDACTED));
        assert!(!format!("{s:?}").contains(DIGEST));

        let bad = format!("{}zz", &DIGEST[..62]);
        let f = file(&format!(
            "[[auth.keys]]\nuser = \"alice\"\nsha256 = \"{bad}\"\n"
        ));
        let message = Settings::load_from(Some(f.path()), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(message.contains("auth.keys[0].sha256"), "{message}");
        assert!(!message.contains(&bad), "{message}");
    }
}
