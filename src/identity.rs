//! Who is asking. For now: the key material the `hash-key` and `gen-key`
//! commands produce for `[[auth.keys]]`.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// Prefix of generated keys, so a leaked one is recognisable in a scan.
pub const KEY_PREFIX: &str = "mpcgw_";

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
