//! Sink secrets at rest: sealed with AES-256-GCM (ring, already in the build through rustls)
//! under a key from the settings, so a copy of the database (a backup, a replica, a support
//! dump) does not hold them in clear. Each value gets a fresh random nonce; the stored form is
//! `enc:v1:<hex of nonce and ciphertext>`. A value without the prefix is a plaintext one from
//! before this existed: it is still read, and sealed at the next start-up.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

const PREFIX: &str = "enc:v1:";

/// The key sealing secrets. Its `Debug` never shows the key.
pub struct SecretBox {
    key: LessSafeKey,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretBoxError {
    #[error("the secrets key must be 64 hexadecimal characters (32 random bytes, e.g. from `openssl rand -hex 32`)")]
    BadKey,
    /// A sealed value that this key does not open: another key, or a damaged value.
    #[error("a stored secret cannot be opened with this key (was the secrets key changed?)")]
    WrongKey,
}

impl SecretBox {
    pub fn from_hex(key: &str) -> Result<SecretBox, SecretBoxError> {
        let bytes = hex::decode(key.trim()).map_err(|_| SecretBoxError::BadKey)?;
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| SecretBoxError::BadKey)?;
        Ok(SecretBox { key: LessSafeKey::new(key) })
    }

    /// A new random key, hex-encoded.
    pub fn generate_hex() -> String {
        let mut key = [0u8; 32];
        SystemRandom::new().fill(&mut key).expect("the system's random source");
        hex::encode(key)
    }

    pub fn seal(&self, plain: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).expect("the system's random source");
        let mut data = plain.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(PREFIX), &mut data)
            .expect("sealing cannot fail for in-memory sizes");
        let mut out = nonce.to_vec();
        out.extend(data);
        format!("{PREFIX}{}", hex::encode(out))
    }

    /// The plain value of a stored one (a legacy plaintext value as it is).
    pub fn open(&self, stored: &str) -> Result<String, SecretBoxError> {
        let Some(sealed) = stored.strip_prefix(PREFIX) else { return Ok(stored.to_owned()) };
        let bytes = hex::decode(sealed).map_err(|_| SecretBoxError::WrongKey)?;
        if bytes.len() < NONCE_LEN {
            return Err(SecretBoxError::WrongKey);
        }
        let (nonce, data) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretBoxError::WrongKey)?;
        let mut data = data.to_vec();
        let plain =
            self.key.open_in_place(nonce, Aad::from(PREFIX), &mut data).map_err(|_| SecretBoxError::WrongKey)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SecretBoxError::WrongKey)
    }

    pub fn is_sealed(stored: &str) -> bool {
        stored.starts_with(PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_with_the_key_only_and_never_show_the_plaintext() {
        let key = SecretBox::generate_hex();
        let b = SecretBox::from_hex(&key).unwrap();
        let sealed = b.seal("hunter2-password");
        assert!(SecretBox::is_sealed(&sealed) && !sealed.contains("hunter2"));
        assert_ne!(sealed, b.seal("hunter2-password"), "a fresh nonce per value");
        assert_eq!(b.open(&sealed).unwrap(), "hunter2-password");
        assert_eq!(b.open("legacy plain").unwrap(), "legacy plain");
        let other = SecretBox::from_hex(&SecretBox::generate_hex()).unwrap();
        assert_eq!(other.open(&sealed), Err(SecretBoxError::WrongKey));
        let mut flipped = sealed.clone();
        flipped.pop();
        flipped.push(if sealed.ends_with('0') { '1' } else { '0' });
        assert_eq!(b.open(&flipped), Err(SecretBoxError::WrongKey));
        assert_eq!(SecretBox::from_hex("abcd").unwrap_err(), SecretBoxError::BadKey);
        assert_eq!(format!("{b:?}"), "SecretBox(..)");
    }
}
