//! Secrets the daemon keeps (provider API keys, webhook secrets), stored in `gateway.db` encrypted
//! with AES-256-GCM under the secrets key init derives from the master key: a fresh 96-bit nonce
//! per value, the secret's name as associated data (a value copied to another name no longer
//! decrypts). Values are never returned over the API; the gateway reads them for itself (webhook
//! signatures).

use std::sync::{Arc, Mutex};

use aiventbus_proto::auth::SecretInfo;
use aiventbus_rpc::time::{now_ms, rfc3339_ms};
use aiventbus_rpc::token::Key;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use rusqlite::{Connection, OptionalExtension, params};

use crate::auth::{StoreError, lock, random_bytes};

/// Longest secret value.
const MAX_VALUE: usize = 64 * 1024;

/// The encrypted secrets.
pub struct SecretStore {
    db: Arc<Mutex<Connection>>,
    key: LessSafeKey,
}

impl SecretStore {
    /// Secrets in `db` (the gateway's database), encrypted under `key`.
    pub fn new(db: Arc<Mutex<Connection>>, key: &Key) -> Result<SecretStore, StoreError> {
        let unbound = UnboundKey::new(&AES_256_GCM, key.as_bytes())
            .map_err(|_| StoreError::Internal("the secrets key is not an AES-256 key".into()))?;
        Ok(SecretStore {
            db,
            key: LessSafeKey::new(unbound),
        })
    }

    /// Stores (or replaces) a secret.
    pub fn set(&self, name: &str, value: &str) -> Result<SecretInfo, StoreError> {
        validate_name(name)?;
        if value.len() > MAX_VALUE {
            return Err(StoreError::Invalid(format!("value: at most {MAX_VALUE} bytes")));
        }
        let nonce_bytes = random_bytes::<NONCE_LEN>()?;
        let mut sealed = value.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(name.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| StoreError::Internal("encrypting a secret failed".into()))?;
        let updated_at = rfc3339_ms(now_ms());
        lock(&self.db).execute(
            "INSERT INTO secrets (name, nonce, ciphertext, updated_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (name) DO UPDATE SET nonce = excluded.nonce, ciphertext = excluded.ciphertext, \
             updated_at = excluded.updated_at",
            params![name, nonce_bytes.as_slice(), sealed, updated_at],
        )?;
        Ok(SecretInfo {
            name: name.to_owned(),
            updated_at,
        })
    }

    /// A secret's value, or `None` when there is none by that name.
    pub fn get(&self, name: &str) -> Result<Option<String>, StoreError> {
        let row: Option<(Vec<u8>, Vec<u8>)> = lock(&self.db)
            .query_row("SELECT nonce, ciphertext FROM secrets WHERE name = ?1", [name], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()?;
        let Some((nonce, mut sealed)) = row else {
            return Ok(None);
        };
        let nonce = <[u8; NONCE_LEN]>::try_from(nonce.as_slice())
            .map_err(|_| StoreError::Internal(format!("secret {name:?}: bad nonce")))?;
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| {
                StoreError::Internal(format!(
                    "secret {name:?} does not decrypt (another master key, or a damaged row)"
                ))
            })?;
        String::from_utf8(plain.to_vec())
            .map(Some)
            .map_err(|_| StoreError::Internal(format!("secret {name:?} is not UTF-8")))
    }

    /// Whether a secret exists.
    pub fn exists(&self, name: &str) -> Result<bool, StoreError> {
        Ok(lock(&self.db)
            .query_row("SELECT 1 FROM secrets WHERE name = ?1", [name], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Names of every secret, alphabetically.
    pub fn list(&self) -> Result<Vec<SecretInfo>, StoreError> {
        let connection = lock(&self.db);
        let mut statement = connection.prepare("SELECT name, updated_at FROM secrets ORDER BY name")?;
        let rows = statement.query_map([], |row| {
            Ok(SecretInfo {
                name: row.get(0)?,
                updated_at: row.get(1)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes a secret; false when there was none.
    pub fn delete(&self, name: &str) -> Result<bool, StoreError> {
        Ok(lock(&self.db).execute("DELETE FROM secrets WHERE name = ?1", [name])? > 0)
    }
}

/// `[A-Za-z0-9_.:/-]`, 1 to 255 characters.
fn validate_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty()
        || name.len() > 255
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'/' | b'-'))
    {
        return Err(StoreError::Invalid(format!(
            "name: {name:?} must be 1-255 characters of A-Z, a-z, 0-9, _ . : / -"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthStore;

    #[test]
    fn values_round_trip_encrypted_and_bound_to_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::from_bytes([3; 32]);
        let auth = AuthStore::open(&dir.path().join("gateway.db"), &key).unwrap();
        let secrets = SecretStore::new(auth.db(), &key).unwrap();
        secrets.set("webhook:github", "s3cret-value").unwrap();
        assert_eq!(secrets.get("webhook:github").unwrap().as_deref(), Some("s3cret-value"));
        assert_eq!(secrets.get("webhook:other").unwrap(), None);
        assert!(secrets.exists("webhook:github").unwrap());

        let (nonce, sealed): (Vec<u8>, Vec<u8>) = lock(&auth.db())
            .query_row("SELECT nonce, ciphertext FROM secrets", [], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .unwrap();
        assert_eq!(nonce.len(), 12);
        assert!(!sealed.windows(6).any(|window| window == b"s3cret"));

        // The same value again gets a fresh nonce.
        secrets.set("webhook:github", "s3cret-value").unwrap();
        let again: Vec<u8> = lock(&auth.db())
            .query_row("SELECT nonce FROM secrets", [], |row| row.get(0))
            .unwrap();
        assert_ne!(again, nonce);

        // Moved to another name, the value no longer decrypts.
        lock(&auth.db())
            .execute("UPDATE secrets SET name = 'provider:openai'", [])
            .unwrap();
        assert!(secrets.get("provider:openai").is_err());
        // Another key cannot read it either.
        secrets.set("a", "b").unwrap();
        let other = SecretStore::new(auth.db(), &Key::from_bytes([4; 32])).unwrap();
        assert!(other.get("a").is_err());

        assert_eq!(
            secrets
                .list()
                .unwrap()
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["a", "provider:openai"]
        );
        assert!(secrets.delete("a").unwrap());
        assert!(!secrets.delete("a").unwrap());
        assert!(matches!(secrets.set("bad name", "x"), Err(StoreError::Invalid(m)) if m.starts_with("name:")));
    }
}
