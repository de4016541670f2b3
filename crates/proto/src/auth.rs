//! Users, API keys, stored secrets and the dashboard's one-time login link (SPEC §12, §16). All
//! of it belongs to the gateway.

use serde::{Deserialize, Serialize};

use crate::methods::Method;

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads.
    Viewer,
    /// Also publishes, approves and answers.
    Operator,
    /// Everything, including agents, rules, users and keys.
    Admin,
}

impl Role {
    /// The wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Parses the wire word.
    pub fn parse(text: &str) -> Option<Role> {
        Some(match text {
            "viewer" => Role::Viewer,
            "operator" => Role::Operator,
            "admin" => Role::Admin,
            _ => return None,
        })
    }
}

method!(
    /// Creates an API key (and the user when missing); the key is shown only in this answer.
    KeysCreate, "keys.create", KeyCreateParams, KeyCreated
);

/// `keys.create` params.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyCreateParams {
    /// User name (`[a-z0-9_.-]`, at most 64).
    pub user: String,
    /// The user's role (set when the user is created; an existing user keeps theirs unless given).
    pub role: Role,
    /// Shown in listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// `keys.create` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyCreated {
    /// The user name: with `key`, the ATP login pair (`identity`, `credential`).
    pub identity: String,
    /// The key itself (`aib_…`); only its keyed hash is stored.
    pub key: String,
    /// `key_…`, for `keys.revoke`.
    pub key_id: String,
    /// The user's role.
    pub role: Role,
}

method!(
    /// API keys (never the keys themselves).
    KeysList, "keys.list", KeysListParams, KeysResult
);

/// `keys.list` params.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysListParams {
    /// Only this user's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// One API key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// `key_…`.
    pub key_id: String,
    /// Its user.
    pub user: String,
    /// Label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The first characters, to recognise it.
    pub prefix: String,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// RFC 3339 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<String>,
    /// Revoked keys stay listed.
    pub revoked: bool,
}

/// `keys.list` result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KeysResult {
    /// Newest first.
    pub keys: Vec<KeyInfo>,
}

method!(
    /// Revokes an API key for good.
    KeysRevoke, "keys.revoke", KeyRef, RevokedResult
);

/// `{key_id}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRef {
    /// `key_…`.
    pub key_id: String,
}

/// `{revoked}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RevokedResult {
    /// False when it was already revoked.
    pub revoked: bool,
}

method!(
    /// Every user.
    UsersList, "users.list", crate::methods::NoParams, UsersResult
);

/// One user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserInfo {
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Whether a password is set.
    pub has_password: bool,
    /// Live API keys.
    pub keys: u32,
    /// RFC 3339 UTC.
    pub created_at: String,
}

/// `users.list` result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UsersResult {
    /// Alphabetical.
    pub users: Vec<UserInfo>,
}

method!(
    /// Changes a user's role.
    UsersSetRole, "users.set_role", SetRoleParams, UserInfo
);

/// `users.set_role` params.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetRoleParams {
    /// Name.
    pub user: String,
    /// New role.
    pub role: Role,
}

method!(
    /// Deletes a user and revokes their keys and sessions.
    UsersDelete, "users.delete", UserRef, crate::methods::DeleteResult
);

/// `{user}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRef {
    /// Name.
    pub user: String,
}

method!(
    /// Sets a user's password (argon2id); the user may then log in with it over ATP.
    UsersSetPassword, "users.set_password", SetPasswordParams, UserInfo
);

/// `users.set_password` params.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPasswordParams {
    /// Name.
    pub user: String,
    /// At least 12 characters.
    pub password: String,
}

method!(
    /// Stores a secret encrypted (AES-256-GCM, its name as associated data); values are never
    /// returned.
    SecretsSet, "secrets.set", SecretSetParams, SecretInfo
);

/// `secrets.set` params.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSetParams {
    /// Name (`[A-Za-z0-9_.:/-]`): `provider:openai`, `webhook:github`, …
    pub name: String,
    /// The value.
    pub value: String,
}

/// One stored secret (never its value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretInfo {
    /// Name.
    pub name: String,
    /// RFC 3339 UTC.
    pub updated_at: String,
}

method!(
    /// Names of the stored secrets.
    SecretsList, "secrets.list", crate::methods::NoParams, SecretsResult
);

/// `secrets.list` result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SecretsResult {
    /// Alphabetical.
    pub secrets: Vec<SecretInfo>,
}

method!(
    /// Deletes a secret.
    SecretsDelete, "secrets.delete", SecretRef, crate::methods::DeleteResult
);

/// `{name}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Name.
    pub name: String,
}

method!(
    /// A one-time login URL for the dashboard (api.sock, owner only); `aibus dashboard` prints it.
    DashboardLink, "dashboard.link", crate::methods::NoParams, DashboardLinkResult
);

/// `dashboard.link` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DashboardLinkResult {
    /// `http://127.0.0.1:8420/login?code=…`: works once, within `expires_at`.
    pub url: String,
    /// RFC 3339 UTC.
    pub expires_at: String,
}
