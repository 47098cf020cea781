//! The API key format.
//!
//! `ingestd_` + 43 random base62 characters (256.03 bits) + 6 base62
//! characters of CRC-32 over everything before them, 57 characters in all:
//!
//! ```text
//! ingestd_4Jx0…(43)…Qz 0bT9aZ
//! └prefix┘└── secret ─┘└crc─┘
//! ```
//!
//! The prefix makes leaked keys greppable (`ingestd_[0-9A-Za-z]{49}`); the
//! checksum lets a scanner, or ingestd itself, tell a key from random text
//! without asking the database, the way GitHub's tokens do. Only
//! [`digest`] (SHA-256 of the whole key) is ever stored.

use sha2::Digest as _;

/// The fixed start of every key.
pub const PREFIX: &str = "ingestd_";
const SECRET_LEN: usize = 43;
const CHECKSUM_LEN: usize = 6;
/// Length of a whole key.
pub const KEY_LEN: usize = PREFIX.len() + SECRET_LEN + CHECKSUM_LEN;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// SHA-256 of a key: how keys are stored and looked up.
pub type Digest = [u8; 32];

/// Why a presented string is not a key. The messages name the rule, never
/// the expected value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("an API key starts with \"ingestd_\"")]
    Prefix,
    #[error("an API key is 57 characters long")]
    Length,
    #[error("an API key holds only letters and digits after its prefix")]
    Alphabet,
    #[error("the API key's checksum does not match (a typo, or a truncated key)")]
    Checksum,
}

/// A new random key. Show it once; store [`digest`] of it.
pub fn generate() -> String {
    let mut key = String::with_capacity(KEY_LEN);
    key.push_str(PREFIX);
    let mut pool = [0u8; 64];
    while key.len() < PREFIX.len() + SECRET_LEN {
        getrandom::fill(&mut pool).expect("the operating system's random source failed");
        // Rejection sampling: 248 = 4 × 62, so every character is equally likely.
        for &b in pool.iter().filter(|&&b| b < 248) {
            if key.len() == PREFIX.len() + SECRET_LEN {
                break;
            }
            key.push(BASE62[usize::from(b % 62)] as char);
        }
    }
    let checksum = checksum(&key);
    key.push_str(&checksum);
    key
}

/// Checks the form of `key` (prefix, length, alphabet, checksum).
pub fn check_format(key: &str) -> Result<(), KeyFormatError> {
    if !key.starts_with(PREFIX) {
        return Err(KeyFormatError::Prefix);
    }
    if key.len() != KEY_LEN {
        return Err(KeyFormatError::Length);
    }
    if !key.as_bytes()[PREFIX.len()..].iter().all(u8::is_ascii_alphanumeric) {
        return Err(KeyFormatError::Alphabet);
    }
    let (body, sum) = key.split_at(KEY_LEN - CHECKSUM_LEN);
    if checksum(body) != sum {
        return Err(KeyFormatError::Checksum);
    }
    Ok(())
}

/// SHA-256 of the key.
pub fn digest(key: &str) -> Digest {
    sha2::Sha256::digest(key.as_bytes()).into()
}

/// CRC-32 (IEEE) of `body` in 6 base62 digits, most significant first.
fn checksum(body: &str) -> String {
    let mut n = crc32fast::hash(body.as_bytes());
    let mut digits = [b'0'; CHECKSUM_LEN];
    for d in digits.iter_mut().rev() {
        *d = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(digits.to_vec()).expect("base62 is ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_documented_shape_and_differ() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        for k in [&a, &b] {
            assert_eq!(k.len(), KEY_LEN);
            assert_eq!(check_format(k), Ok(()));
            assert!(k.starts_with("ingestd_"));
            assert!(k[PREFIX.len()..].bytes().all(|c| c.is_ascii_alphanumeric()));
        }
    }

    #[test]
    fn every_base62_character_turns_up() {
        // 200 keys × 43 characters: a missing character would mean a biased alphabet.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.extend(generate()[PREFIX.len()..PREFIX.len() + SECRET_LEN].chars());
        }
        assert_eq!(seen.len(), 62);
    }

    #[test]
    fn malformed_keys_are_told_apart() {
        let key = generate();
        assert_eq!(check_format(&key.replacen("ingestd_", "ingestx_", 1)), Err(KeyFormatError::Prefix));
        assert_eq!(check_format(&key[..KEY_LEN - 1]), Err(KeyFormatError::Length));
        assert_eq!(check_format(&format!("{}-{}", &key[..20], &key[21..])), Err(KeyFormatError::Alphabet));
        // One character of the secret changed: the checksum catches it.
        let mut typo = key.clone().into_bytes();
        typo[20] = if typo[20] == b'a' { b'b' } else { b'a' };
        assert_eq!(check_format(std::str::from_utf8(&typo).unwrap()), Err(KeyFormatError::Checksum));
    }

    #[test]
    fn checksum_and_digest_are_pinned() {
        // A change here would invalidate every key issued: never change them.
        // CRC-32/IEEE check value 0xCBF43926, in base62.
        assert_eq!(checksum("123456789"), "3jZRME");
        assert_eq!(
            digest("abc"),
            [
                0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23, 0xb0,
                0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad
            ]
        );
    }
}
