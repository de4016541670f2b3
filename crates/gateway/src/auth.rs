//! Users, API keys and sessions (ATP and dashboard) in `<state>/gateway.db`, with every row also
//! held in memory: the gateway is the only writer of that file, so the cache is exact and a request
//! is authenticated without touching the disk. Keys and session tokens are stored only as
//! HMAC-SHA256 under a key derived from the secrets key (a stolen database does not yield working
//! credentials, and a lookup is one hash plus one map probe); passwords as argon2id.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use aiventbus_proto::auth::{KeyCreated, KeyInfo, Role, UserInfo};
use aiventbus_rpc::time::{now_ms, rfc3339_ms};
use aiventbus_rpc::token::Key;
use base64::Engine as _;
use hmac::{KeyInit, Mac};
use rusqlite::{Connection, params};

/// Schema steps, applied in order; step `n` (1-based) brings the database to version `n`. Never
/// edit a released step: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: users, API keys, sessions, secrets.
    r#"
    CREATE TABLE users (
        name          TEXT PRIMARY KEY,
        role          TEXT NOT NULL,
        password_hash TEXT,
        created_at    TEXT NOT NULL
    );
    CREATE TABLE api_keys (
        key_id       TEXT PRIMARY KEY,
        user         TEXT NOT NULL,
        label        TEXT,
        prefix       TEXT NOT NULL,
        hash         BLOB NOT NULL UNIQUE,
        created_at   TEXT NOT NULL,
        last_used_ms INTEGER,
        revoked      INTEGER NOT NULL DEFAULT 0
    );
    -- ATP sessions and dashboard sessions. `role` is fixed for dashboard sessions (the owner acts
    -- as admin); NULL follows the user's current role.
    CREATE TABLE sessions (
        session_id    TEXT PRIMARY KEY,
        kind          TEXT NOT NULL,
        user          TEXT NOT NULL,
        role          TEXT,
        token_hash    BLOB NOT NULL UNIQUE,
        created_at    TEXT NOT NULL,
        expires_at_ms INTEGER NOT NULL,
        revoked       INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE secrets (
        name       TEXT PRIMARY KEY,
        nonce      BLOB NOT NULL,
        ciphertext BLOB NOT NULL,
        updated_at TEXT NOT NULL
    );
    "#,
];

/// Prefix of API keys.
pub const KEY_PREFIX: &str = "aib_";
/// Prefix of ATP session tokens.
pub const SESSION_TOKEN_PREFIX: &str = "ats_";
/// Prefix of dashboard session ids (the cookie's value).
pub const DASHBOARD_PREFIX: &str = "ads_";
/// How long an ATP or dashboard session lives.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// How long a one-time dashboard code works.
pub const CODE_TTL: Duration = Duration::from_secs(5 * 60);
/// Outstanding one-time codes at most (the oldest is dropped).
const MAX_CODES: usize = 64;
/// `last_used_ms` is written to disk at most this often per key.
const LAST_USED_WRITE_EVERY_MS: u64 = 60_000;
/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 12;

/// A keyed hash of a credential.
pub type Digest = [u8; 32];

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Bad input; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// No such user, key or session.
    #[error("{0}")]
    NotFound(String),
    /// The database failed.
    #[error("gateway store: {0}")]
    Internal(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> StoreError {
        StoreError::Internal(error.to_string())
    }
}

impl From<StoreError> for aiventbus_rpc::RpcError {
    fn from(error: StoreError) -> aiventbus_rpc::RpcError {
        match error {
            StoreError::Invalid(message) => aiventbus_rpc::RpcError::invalid_params(message),
            StoreError::NotFound(message) => aiventbus_rpc::RpcError::not_found(message),
            StoreError::Internal(detail) => aiventbus_rpc::RpcError::internal(detail),
        }
    }
}

/// Who a credential belongs to, as found by [`AuthStore::lookup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User name.
    pub user: String,
    /// Role now.
    pub role: Role,
    /// The session (`atp_…`, `dash_…`) when the credential is a session token.
    pub session_id: Option<String>,
}

/// Why a credential was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Unknown or malformed.
    Unknown,
    /// Past its expiry.
    Expired,
    /// Revoked (logout, `keys.revoke`, user deleted).
    Revoked,
}

#[derive(Debug, Clone)]
struct UserRow {
    role: Role,
    password_hash: Option<String>,
    created_at: String,
}

#[derive(Debug, Clone)]
struct KeyRow {
    key_id: String,
    user: String,
    label: Option<String>,
    prefix: String,
    created_at: String,
    last_used_ms: Option<u64>,
    last_written_ms: u64,
    revoked: bool,
}

#[derive(Debug, Clone)]
struct SessionRow {
    session_id: String,
    user: String,
    role: Option<Role>,
    expires_at_ms: u64,
    revoked: bool,
}

#[derive(Default)]
struct Cache {
    users: HashMap<String, UserRow>,
    keys: HashMap<Digest, KeyRow>,
    key_ids: HashMap<String, Digest>,
    sessions: HashMap<Digest, SessionRow>,
    session_ids: HashMap<String, Digest>,
}

struct Code {
    user: String,
    expires_at_ms: u64,
}

/// The gateway's credential store. Cheap to share behind an `Arc`.
pub struct AuthStore {
    db: Arc<Mutex<Connection>>,
    hash_key: Key,
    cache: RwLock<Cache>,
    codes: Mutex<Vec<(Digest, Code)>>,
    /// An argon2id hash that matches nothing, checked for unknown users so that a failed login
    /// costs the same whether the user exists or not.
    decoy_hash: String,
}

/// A freshly made session.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// The secret the client presents.
    pub token: String,
    /// `atp_…` or `dash_…`.
    pub session_id: String,
    /// Unix ms.
    pub expires_at_ms: u64,
}

impl AuthStore {
    /// Opens (creating when missing) `path`, brings its schema up to date, and loads every row.
    /// `secrets_key` is the key init hands the gateway; credential hashes use a key derived from
    /// it, so they are worthless without the key.
    pub fn open(path: &Path, secrets_key: &Key) -> Result<AuthStore, StoreError> {
        let connection = open_db(path)?;
        let hash_key = secrets_key.derive(b"aiventbus gateway credential hashes v1");
        let decoy_hash = hash_password(&base64_url(&random_bytes::<16>()?))?;
        let store = AuthStore {
            db: Arc::new(Mutex::new(connection)),
            hash_key,
            cache: RwLock::new(Cache::default()),
            codes: Mutex::new(Vec::new()),
            decoy_hash,
        };
        store.load()?;
        Ok(store)
    }

    /// The database connection, shared with the secrets store.
    pub fn db(&self) -> Arc<Mutex<Connection>> {
        self.db.clone()
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        lock(&self.db)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        // Every change to the cache is a few map operations: a panic cannot leave it half done.
        self.cache.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Cache> {
        self.cache.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn load(&self) -> Result<(), StoreError> {
        let now = now_ms();
        let cache = self.read_all(now)?;
        *self.write() = cache;
        Ok(())
    }

    fn read_all(&self, now: u64) -> Result<Cache, StoreError> {
        let connection = self.conn();
        connection.execute(
            "DELETE FROM sessions WHERE expires_at_ms < ?1",
            [i64::try_from(now).unwrap_or(i64::MAX)],
        )?;
        let mut cache = Cache::default();
        let mut statement = connection.prepare("SELECT name, role, password_hash, created_at FROM users")?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Option<String>>(2)?,
                row.get::<_, String>(3)?,
            ))
        })?;
        for row in rows {
            let (name, role, password_hash, created_at) = row?;
            let role = Role::parse(&role).unwrap_or(Role::Viewer);
            cache.users.insert(
                name,
                UserRow {
                    role,
                    password_hash,
                    created_at,
                },
            );
        }
        let mut statement = connection
            .prepare("SELECT key_id, user, label, prefix, hash, created_at, last_used_ms, revoked FROM api_keys")?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, Vec<u8>>(4)?,
                KeyRow {
                    key_id: row.get(0)?,
                    user: row.get(1)?,
                    label: row.get(2)?,
                    prefix: row.get(3)?,
                    created_at: row.get(5)?,
                    last_used_ms: row.get::<_, Option<i64>>(6)?.map(|ms| ms.max(0) as u64),
                    last_written_ms: row.get::<_, Option<i64>>(6)?.map(|ms| ms.max(0) as u64).unwrap_or(0),
                    revoked: row.get::<_, i64>(7)? != 0,
                },
            ))
        })?;
        for row in rows {
            let (hash, key) = row?;
            let Ok(digest) = Digest::try_from(hash.as_slice()) else {
                continue;
            };
            cache.key_ids.insert(key.key_id.clone(), digest);
            cache.keys.insert(digest, key);
        }
        let mut statement =
            connection.prepare("SELECT session_id, user, role, token_hash, expires_at_ms, revoked FROM sessions")?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, Vec<u8>>(3)?,
                SessionRow {
                    session_id: row.get(0)?,
                    user: row.get(1)?,
                    role: row.get::<_, Option<String>>(2)?.and_then(|role| Role::parse(&role)),
                    expires_at_ms: row.get::<_, i64>(4)?.max(0) as u64,
                    revoked: row.get::<_, i64>(5)? != 0,
                },
            ))
        })?;
        for row in rows {
            let (hash, session) = row?;
            let Ok(digest) = Digest::try_from(hash.as_slice()) else {
                continue;
            };
            cache.session_ids.insert(session.session_id.clone(), digest);
            cache.sessions.insert(digest, session);
        }
        Ok(cache)
    }

    /// The keyed hash of a credential.
    pub fn digest(&self, secret: &str) -> Digest {
        // HMAC takes keys of any length: this cannot fail.
        let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(self.hash_key.as_bytes())
            .expect("HMAC accepts keys of any length");
        mac.update(secret.as_bytes());
        mac.finalize().into_bytes().into()
    }

    // ------------------------------------------------------------ authentication

    /// Who `token` (an API key, ATP session token or dashboard session id) belongs to.
    pub fn lookup(&self, token: &str) -> Result<Identity, Refusal> {
        let known_kind = [KEY_PREFIX, SESSION_TOKEN_PREFIX, DASHBOARD_PREFIX]
            .iter()
            .any(|prefix| token.starts_with(prefix));
        if token.len() > 256 || !known_kind {
            return Err(Refusal::Unknown);
        }
        let digest = self.digest(token);
        let now = now_ms();
        if token.starts_with(KEY_PREFIX) {
            let (identity, write_last_used) = {
                let cache = self.read();
                let key = cache.keys.get(&digest).ok_or(Refusal::Unknown)?;
                if key.revoked {
                    return Err(Refusal::Revoked);
                }
                let user = cache.users.get(&key.user).ok_or(Refusal::Revoked)?;
                (
                    Identity {
                        user: key.user.clone(),
                        role: user.role,
                        session_id: None,
                    },
                    now.saturating_sub(key.last_written_ms) >= LAST_USED_WRITE_EVERY_MS,
                )
            };
            if write_last_used {
                self.touch_key(digest, now);
            }
            return Ok(identity);
        }
        if token.starts_with(SESSION_TOKEN_PREFIX) || token.starts_with(DASHBOARD_PREFIX) {
            let cache = self.read();
            let session = cache.sessions.get(&digest).ok_or(Refusal::Unknown)?;
            if session.revoked {
                return Err(Refusal::Revoked);
            }
            if session.expires_at_ms <= now {
                return Err(Refusal::Expired);
            }
            let role = match session.role {
                Some(role) => role,
                None => cache.users.get(&session.user).ok_or(Refusal::Revoked)?.role,
            };
            return Ok(Identity {
                user: session.user.clone(),
                role,
                session_id: Some(session.session_id.clone()),
            });
        }
        Err(Refusal::Unknown)
    }

    fn touch_key(&self, digest: Digest, now: u64) {
        let key_id = {
            let mut cache = self.write();
            let Some(key) = cache.keys.get_mut(&digest) else {
                return;
            };
            if now.saturating_sub(key.last_written_ms) < LAST_USED_WRITE_EVERY_MS {
                return;
            }
            key.last_used_ms = Some(now);
            key.last_written_ms = now;
            key.key_id.clone()
        };
        let db = self.db.clone();
        let write = move || {
            let result = lock(&db).execute(
                "UPDATE api_keys SET last_used_ms = ?1 WHERE key_id = ?2",
                params![i64::try_from(now).unwrap_or(i64::MAX), key_id],
            );
            if let Err(error) = result {
                tracing::warn!(%error, "recording a key's last use failed");
            }
        };
        // Off the request path when there is a runtime; losing one such write loses only a timestamp.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(write)),
            Err(_) => write(),
        }
    }

    /// Checks a login pair: `credential` is one of the user's live API keys or their password.
    /// Returns the user's identity, or `None` — the same for an unknown user and a wrong
    /// credential, and after the same work (a password check runs against a decoy hash).
    /// Blocking: argon2 takes tens of milliseconds; call it on a blocking thread.
    pub fn check_login(&self, identity: &str, credential: &str) -> Option<Identity> {
        if credential.starts_with(KEY_PREFIX) {
            let digest = self.digest(credential);
            let cache = self.read();
            let key = cache.keys.get(&digest)?;
            let user = cache.users.get(identity)?;
            if key.revoked || key.user != identity {
                return None;
            }
            return Some(Identity {
                user: identity.to_owned(),
                role: user.role,
                session_id: None,
            });
        }
        let (hash, role) = {
            let cache = self.read();
            match cache.users.get(identity) {
                Some(UserRow {
                    password_hash: Some(hash),
                    role,
                    ..
                }) => (hash.clone(), Some(*role)),
                _ => (self.decoy_hash.clone(), None),
            }
        };
        let matches = verify_password(&hash, credential);
        match (matches, role) {
            (true, Some(role)) => Some(Identity {
                user: identity.to_owned(),
                role,
                session_id: None,
            }),
            _ => None,
        }
    }

    // ------------------------------------------------------------ sessions

    /// Starts an ATP session for `user` (its role follows the user's).
    pub fn create_session(&self, user: &str) -> Result<NewSession, StoreError> {
        self.insert_session("atp", SESSION_TOKEN_PREFIX, user, None)
    }

    fn insert_session(
        &self,
        kind: &str,
        token_prefix: &str,
        user: &str,
        role: Option<Role>,
    ) -> Result<NewSession, StoreError> {
        let token = format!("{token_prefix}{}", base64_url(&random_bytes::<32>()?));
        let digest = self.digest(&token);
        let session_id = aiventbus_rpc::ids::prefixed(if kind == "atp" { "atp" } else { "dash" });
        let now = now_ms();
        let expires_at_ms = now + SESSION_TTL.as_millis() as u64;
        self.conn().execute(
            "INSERT INTO sessions (session_id, kind, user, role, token_hash, created_at, expires_at_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                session_id,
                kind,
                user,
                role.map(Role::as_str),
                digest.as_slice(),
                rfc3339_ms(now),
                i64::try_from(expires_at_ms).unwrap_or(i64::MAX)
            ],
        )?;
        let mut cache = self.write();
        cache.session_ids.insert(session_id.clone(), digest);
        cache.sessions.insert(
            digest,
            SessionRow {
                session_id: session_id.clone(),
                user: user.to_owned(),
                role,
                expires_at_ms,
                revoked: false,
            },
        );
        Ok(NewSession {
            token,
            session_id,
            expires_at_ms,
        })
    }

    /// Gives a live session a new token and a fresh expiry; the old token stops working.
    pub fn refresh_session(&self, session_id: &str) -> Result<NewSession, StoreError> {
        let old = self
            .read()
            .session_ids
            .get(session_id)
            .copied()
            .ok_or_else(|| StoreError::NotFound(format!("no session {session_id}")))?;
        let prefix = if session_id.starts_with("dash_") {
            DASHBOARD_PREFIX
        } else {
            SESSION_TOKEN_PREFIX
        };
        let token = format!("{prefix}{}", base64_url(&random_bytes::<32>()?));
        let digest = self.digest(&token);
        let expires_at_ms = now_ms() + SESSION_TTL.as_millis() as u64;
        {
            let cache = self.read();
            let session = cache
                .sessions
                .get(&old)
                .ok_or_else(|| StoreError::NotFound(format!("no session {session_id}")))?;
            if session.revoked || session.expires_at_ms <= now_ms() {
                return Err(StoreError::NotFound(format!("session {session_id} has ended")));
            }
        }
        let changed = self.conn().execute(
            "UPDATE sessions SET token_hash = ?1, expires_at_ms = ?2 WHERE session_id = ?3 AND revoked = 0",
            params![
                digest.as_slice(),
                i64::try_from(expires_at_ms).unwrap_or(i64::MAX),
                session_id
            ],
        )?;
        if changed == 0 {
            return Err(StoreError::NotFound(format!("session {session_id} has ended")));
        }
        let mut cache = self.write();
        if let Some(mut session) = cache.sessions.remove(&old) {
            session.expires_at_ms = expires_at_ms;
            cache.sessions.insert(digest, session);
            cache.session_ids.insert(session_id.to_owned(), digest);
        }
        Ok(NewSession {
            token,
            session_id: session_id.to_owned(),
            expires_at_ms,
        })
    }

    /// Revokes a session for good (the row stays until it would have expired, so the revocation
    /// survives restarts).
    pub fn revoke_session(&self, session_id: &str) -> Result<bool, StoreError> {
        let changed = self.conn().execute(
            "UPDATE sessions SET revoked = 1 WHERE session_id = ?1 AND revoked = 0",
            [session_id],
        )?;
        let mut cache = self.write();
        if let Some(digest) = cache.session_ids.get(session_id).copied()
            && let Some(session) = cache.sessions.get_mut(&digest)
        {
            session.revoked = true;
        }
        Ok(changed > 0)
    }

    /// Mints a one-time dashboard code for `user` (the owner), valid for [`CODE_TTL`].
    pub fn mint_code(&self, user: &str) -> Result<(String, u64), StoreError> {
        let code = base64_url(&random_bytes::<32>()?);
        let expires_at_ms = now_ms() + CODE_TTL.as_millis() as u64;
        let mut codes = lock(&self.codes);
        let now = now_ms();
        codes.retain(|(_, code)| code.expires_at_ms > now);
        if codes.len() >= MAX_CODES {
            codes.remove(0);
        }
        codes.push((
            self.digest(&code),
            Code {
                user: user.to_owned(),
                expires_at_ms,
            },
        ));
        Ok((code, expires_at_ms))
    }

    /// Consumes a one-time code: a dashboard session for its user (acting as admin), or `None`
    /// when the code is unknown, used or expired.
    pub fn redeem_code(&self, code: &str) -> Result<Option<NewSession>, StoreError> {
        if code.len() > 128 {
            return Ok(None);
        }
        let digest = self.digest(code);
        let found = {
            let mut codes = lock(&self.codes);
            let position = codes.iter().position(|(stored, _)| *stored == digest);
            position.map(|position| codes.remove(position).1)
        };
        match found {
            Some(code) if code.expires_at_ms > now_ms() => self
                .insert_session("dashboard", DASHBOARD_PREFIX, &code.user, Some(Role::Admin))
                .map(Some),
            _ => Ok(None),
        }
    }

    // ------------------------------------------------------------ users and keys

    /// Creates an API key for `user`, creating the user with `role` when missing (an existing
    /// user gets `role`).
    pub fn create_key(&self, user: &str, role: Role, label: Option<String>) -> Result<KeyCreated, StoreError> {
        validate_user(user)?;
        if let Some(label) = &label
            && (label.len() > 200 || label.chars().any(char::is_control))
        {
            return Err(StoreError::Invalid("label: at most 200 printable characters".into()));
        }
        let key = format!("{KEY_PREFIX}{}", base64_url(&random_bytes::<32>()?));
        let digest = self.digest(&key);
        let key_id = aiventbus_rpc::ids::prefixed("key");
        let prefix: String = key.chars().take(KEY_PREFIX.len() + 6).collect();
        let now = rfc3339_ms(now_ms());
        {
            let mut connection = self.conn();
            let transaction = connection.transaction()?;
            transaction.execute(
                "INSERT INTO users (name, role, created_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET role = excluded.role",
                params![user, role.as_str(), now],
            )?;
            transaction.execute(
                "INSERT INTO api_keys (key_id, user, label, prefix, hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![key_id, user, label, prefix, digest.as_slice(), now],
            )?;
            transaction.commit()?;
        }
        let mut cache = self.write();
        cache
            .users
            .entry(user.to_owned())
            .and_modify(|row| row.role = role)
            .or_insert_with(|| UserRow {
                role,
                password_hash: None,
                created_at: now.clone(),
            });
        cache.key_ids.insert(key_id.clone(), digest);
        cache.keys.insert(
            digest,
            KeyRow {
                key_id: key_id.clone(),
                user: user.to_owned(),
                label,
                prefix,
                created_at: now,
                last_used_ms: None,
                last_written_ms: 0,
                revoked: false,
            },
        );
        Ok(KeyCreated {
            identity: user.to_owned(),
            key,
            key_id,
            role,
        })
    }

    /// Every key (or one user's), newest first.
    pub fn keys(&self, user: Option<&str>) -> Vec<KeyInfo> {
        let cache = self.read();
        let mut keys: Vec<KeyInfo> = cache
            .keys
            .values()
            .filter(|key| user.is_none_or(|user| key.user == user))
            .map(|key| KeyInfo {
                key_id: key.key_id.clone(),
                user: key.user.clone(),
                label: key.label.clone(),
                prefix: key.prefix.clone(),
                created_at: key.created_at.clone(),
                last_used_at: key.last_used_ms.map(rfc3339_ms),
                revoked: key.revoked,
            })
            .collect();
        keys.sort_by(|a, b| b.key_id.cmp(&a.key_id));
        keys
    }

    /// Revokes a key; false when it was already revoked.
    pub fn revoke_key(&self, key_id: &str) -> Result<bool, StoreError> {
        let digest = self
            .read()
            .key_ids
            .get(key_id)
            .copied()
            .ok_or_else(|| StoreError::NotFound(format!("key_id: no key {key_id:?}")))?;
        let changed = self.conn().execute(
            "UPDATE api_keys SET revoked = 1 WHERE key_id = ?1 AND revoked = 0",
            [key_id],
        )?;
        if let Some(key) = self.write().keys.get_mut(&digest) {
            key.revoked = true;
        }
        Ok(changed > 0)
    }

    /// Every user, alphabetically.
    pub fn users(&self) -> Vec<UserInfo> {
        let cache = self.read();
        let mut users: Vec<UserInfo> = cache
            .users
            .iter()
            .map(|(name, row)| user_info(&cache, name, row))
            .collect();
        users.sort_by(|a, b| a.name.cmp(&b.name));
        users
    }

    /// Changes a user's role; live sessions and keys follow at once.
    pub fn set_role(&self, user: &str, role: Role) -> Result<UserInfo, StoreError> {
        self.require_user(user)?;
        self.conn().execute(
            "UPDATE users SET role = ?1 WHERE name = ?2",
            params![role.as_str(), user],
        )?;
        let mut cache = self.write();
        if let Some(row) = cache.users.get_mut(user) {
            row.role = role;
        }
        let row = cache
            .users
            .get(user)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(format!("user: no user {user:?}")))?;
        Ok(user_info(&cache, user, &row))
    }

    /// Sets a user's password (argon2id). Blocking: call it on a blocking thread.
    pub fn set_password(&self, user: &str, password: &str) -> Result<UserInfo, StoreError> {
        self.require_user(user)?;
        if password.chars().count() < MIN_PASSWORD {
            return Err(StoreError::Invalid(format!(
                "password: at least {MIN_PASSWORD} characters"
            )));
        }
        if password.len() > 1024 {
            return Err(StoreError::Invalid("password: at most 1024 bytes".into()));
        }
        let hash = hash_password(password)?;
        self.conn().execute(
            "UPDATE users SET password_hash = ?1 WHERE name = ?2",
            params![hash, user],
        )?;
        let mut cache = self.write();
        if let Some(row) = cache.users.get_mut(user) {
            row.password_hash = Some(hash);
        }
        let row = cache
            .users
            .get(user)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(format!("user: no user {user:?}")))?;
        Ok(user_info(&cache, user, &row))
    }

    /// Deletes a user with their keys and sessions; false when there was no such user.
    pub fn delete_user(&self, user: &str) -> Result<bool, StoreError> {
        let deleted = {
            let mut connection = self.conn();
            let transaction = connection.transaction()?;
            let deleted = transaction.execute("DELETE FROM users WHERE name = ?1", [user])?;
            transaction.execute("UPDATE api_keys SET revoked = 1 WHERE user = ?1", [user])?;
            transaction.execute(
                "UPDATE sessions SET revoked = 1 WHERE user = ?1 AND role IS NULL",
                [user],
            )?;
            transaction.commit()?;
            deleted > 0
        };
        let mut cache = self.write();
        cache.users.remove(user);
        for key in cache.keys.values_mut().filter(|key| key.user == user) {
            key.revoked = true;
        }
        for session in cache
            .sessions
            .values_mut()
            .filter(|session| session.user == user && session.role.is_none())
        {
            session.revoked = true;
        }
        Ok(deleted)
    }

    fn require_user(&self, user: &str) -> Result<(), StoreError> {
        if self.read().users.contains_key(user) {
            Ok(())
        } else {
            Err(StoreError::NotFound(format!("user: no user {user:?}")))
        }
    }
}

fn user_info(cache: &Cache, name: &str, row: &UserRow) -> UserInfo {
    UserInfo {
        name: name.to_owned(),
        role: row.role,
        has_password: row.password_hash.is_some(),
        keys: cache
            .keys
            .values()
            .filter(|key| key.user == name && !key.revoked)
            .count() as u32,
        created_at: row.created_at.clone(),
    }
}

/// Checks a user name: `[a-z0-9_.-]`, 1 to 64 characters.
pub fn validate_user(user: &str) -> Result<(), StoreError> {
    if user.is_empty()
        || user.len() > 64
        || !user
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(StoreError::Invalid(format!(
            "user: {user:?} must be 1-64 characters of a-z, 0-9, _, . and -"
        )));
    }
    Ok(())
}

/// Opens `gateway.db` in WAL mode and applies the migrations.
fn open_db(path: &Path) -> Result<Connection, StoreError> {
    let at = |what: &str, error: rusqlite::Error| StoreError::Internal(format!("{}: {what}: {error}", path.display()));
    let mut connection = Connection::open(path).map_err(|error| at("cannot open", error))?;
    connection
        .busy_timeout(Duration::from_secs(5))
        .map_err(|error| at("cannot set busy_timeout", error))?;
    let mode: String = connection
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(|error| at("cannot enable WAL", error))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Internal(format!(
            "{}: the gateway store needs WAL mode, the file system gave {mode}",
            path.display()
        )));
    }
    connection
        .execute_batch("PRAGMA synchronous = NORMAL;")
        .map_err(|error| at("cannot configure", error))?;
    let version: i64 = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|error| at("cannot read the schema version", error))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::Internal(format!(
            "{}: schema version {version} is newer than this gateway knows ({known})",
            path.display()
        )));
    }
    for (index, step) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let transaction = connection.transaction().map_err(|error| at("migration", error))?;
        transaction
            .execute_batch(step)
            .and_then(|()| transaction.pragma_update(None, "user_version", index as i64 + 1))
            .and_then(|()| transaction.commit())
            .map_err(|error| at(&format!("migration {}", index + 1), error))?;
    }
    // The file holds credential hashes and encrypted secrets: owner only.
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    Ok(connection)
}

/// Locks a mutex, ignoring poisoning: every critical section is a single statement or a few map
/// operations, so a panic cannot leave the data half changed.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `n` random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], StoreError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|error| StoreError::Internal(format!("random source: {error}")))?;
    Ok(bytes)
}

/// Unpadded base64url.
pub fn base64_url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn hash_password(password: &str) -> Result<String, StoreError> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(&random_bytes::<16>()?)
        .map_err(|error| StoreError::Internal(format!("salt: {error}")))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| StoreError::Internal(format!("argon2: {error}")))
}

fn verify_password(hash: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    match PasswordHash::new(hash) {
        Ok(parsed) => argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, AuthStore) {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::from_bytes([7; 32]);
        let store = AuthStore::open(&dir.path().join("gateway.db"), &key).unwrap();
        (dir, store)
    }

    #[test]
    fn keys_authenticate_until_revoked_and_survive_reopening() {
        let (dir, store) = store();
        let created = store
            .create_key("alice", Role::Operator, Some("laptop".into()))
            .unwrap();
        assert!(created.key.starts_with(KEY_PREFIX));
        assert!(created.key.len() > 40, "{}", created.key);
        let identity = store.lookup(&created.key).unwrap();
        assert_eq!(identity.user, "alice");
        assert_eq!(identity.role, Role::Operator);
        assert_eq!(store.lookup("aib_nope"), Err(Refusal::Unknown));
        assert_eq!(store.lookup("garbage"), Err(Refusal::Unknown));

        // Only the hash is stored.
        let connection = Connection::open(dir.path().join("gateway.db")).unwrap();
        let stored: Vec<u8> = connection
            .query_row("SELECT hash FROM api_keys", [], |row| row.get(0))
            .unwrap();
        assert_ne!(stored, created.key.as_bytes());
        assert_eq!(stored.len(), 32);

        let key = Key::from_bytes([7; 32]);
        let reopened = AuthStore::open(&dir.path().join("gateway.db"), &key).unwrap();
        assert_eq!(reopened.lookup(&created.key).unwrap().user, "alice");
        assert!(reopened.revoke_key(&created.key_id).unwrap());
        assert!(!reopened.revoke_key(&created.key_id).unwrap());
        assert_eq!(reopened.lookup(&created.key), Err(Refusal::Revoked));
        let again = AuthStore::open(&dir.path().join("gateway.db"), &key).unwrap();
        assert_eq!(again.lookup(&created.key), Err(Refusal::Revoked));

        // Another secrets key: the stored hashes match nothing.
        let other = AuthStore::open(&dir.path().join("gateway.db"), &Key::from_bytes([8; 32])).unwrap();
        assert_eq!(other.lookup(&created.key), Err(Refusal::Unknown));
    }

    #[test]
    fn login_fails_alike_for_unknown_users_and_wrong_credentials() {
        let (_dir, store) = store();
        let created = store.create_key("bob", Role::Viewer, None).unwrap();
        assert_eq!(store.check_login("bob", &created.key).unwrap().role, Role::Viewer);
        assert!(store.check_login("carol", &created.key).is_none());
        assert!(store.check_login("bob", "aib_wrong").is_none());
        assert!(store.check_login("bob", "a password of sorts").is_none());
        assert!(matches!(
            store.set_password("bob", "short"),
            Err(StoreError::Invalid(message)) if message.contains("password")
        ));
        let info = store.set_password("bob", "correct horse battery").unwrap();
        assert!(info.has_password);
        assert_eq!(info.keys, 1);
        assert!(store.check_login("bob", "correct horse battery").is_some());
        assert!(store.check_login("bob", "correct horse battery!").is_none());
        assert!(store.check_login("nobody", "correct horse battery").is_none());
    }

    #[test]
    fn sessions_refresh_expire_and_stay_revoked() {
        let (dir, store) = store();
        store.create_key("dave", Role::Admin, None).unwrap();
        let session = store.create_session("dave").unwrap();
        assert!(session.session_id.starts_with("atp_"));
        let identity = store.lookup(&session.token).unwrap();
        assert_eq!(identity.session_id.as_deref(), Some(session.session_id.as_str()));
        assert_eq!(identity.role, Role::Admin);
        store.set_role("dave", Role::Viewer).unwrap();
        assert_eq!(store.lookup(&session.token).unwrap().role, Role::Viewer);

        let refreshed = store.refresh_session(&session.session_id).unwrap();
        assert_eq!(store.lookup(&session.token), Err(Refusal::Unknown));
        assert!(store.lookup(&refreshed.token).is_ok());
        assert!(store.revoke_session(&session.session_id).unwrap());
        assert_eq!(store.lookup(&refreshed.token), Err(Refusal::Revoked));
        let reopened = AuthStore::open(&dir.path().join("gateway.db"), &Key::from_bytes([7; 32])).unwrap();
        assert_eq!(reopened.lookup(&refreshed.token), Err(Refusal::Revoked));

        // Expiry.
        let short = store.create_session("dave").unwrap();
        store
            .conn()
            .execute(
                "UPDATE sessions SET expires_at_ms = 1 WHERE session_id = ?1",
                [&short.session_id],
            )
            .unwrap();
        let reopened = AuthStore::open(&dir.path().join("gateway.db"), &Key::from_bytes([7; 32])).unwrap();
        assert_eq!(reopened.lookup(&short.token), Err(Refusal::Unknown));
        {
            let digest = store.digest(&short.token);
            store.write().sessions.get_mut(&digest).unwrap().expires_at_ms = 1;
        }
        assert_eq!(store.lookup(&short.token), Err(Refusal::Expired));
    }

    #[test]
    fn dashboard_codes_work_once() {
        let (_dir, store) = store();
        let (code, _) = store.mint_code("owner").unwrap();
        let session = store.redeem_code(&code).unwrap().unwrap();
        assert!(session.token.starts_with(DASHBOARD_PREFIX));
        let identity = store.lookup(&session.token).unwrap();
        assert_eq!((identity.user.as_str(), identity.role), ("owner", Role::Admin));
        assert!(store.redeem_code(&code).unwrap().is_none());
        assert!(store.redeem_code("made-up").unwrap().is_none());
    }

    #[test]
    fn deleting_a_user_revokes_everything_of_theirs() {
        let (_dir, store) = store();
        let key = store.create_key("erin", Role::Operator, None).unwrap();
        let session = store.create_session("erin").unwrap();
        assert!(store.delete_user("erin").unwrap());
        assert_eq!(store.lookup(&key.key), Err(Refusal::Revoked));
        assert_eq!(store.lookup(&session.token), Err(Refusal::Revoked));
        assert!(!store.delete_user("erin").unwrap());
        assert!(matches!(
            store.set_role("erin", Role::Admin),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store.create_key("Bad Name", Role::Admin, None),
            Err(StoreError::Invalid(message)) if message.starts_with("user:")
        ));
    }
}
