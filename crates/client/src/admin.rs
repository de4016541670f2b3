//! Typed calls for the gateway's own records: users, API keys, stored secrets and the dashboard's
//! one-time login link (SPEC §12, §16).

use aiventbus_proto::auth::{
    DashboardLink, DashboardLinkResult, KeyCreateParams, KeyCreated, KeyInfo, KeyRef, KeysCreate, KeysList,
    KeysListParams, KeysRevoke, Role, SecretInfo, SecretRef, SecretSetParams, SecretsDelete, SecretsList, SecretsSet,
    SetPasswordParams, SetRoleParams, UserInfo, UserRef, UsersDelete, UsersList, UsersSetPassword, UsersSetRole,
};
use aiventbus_proto::methods::NoParams;

use crate::{Client, Error};

impl Client {
    /// Creates an API key (and its user when missing); the key is in this answer only
    /// (`keys.create`).
    pub async fn create_key(&self, params: &KeyCreateParams) -> Result<KeyCreated, Error> {
        self.call::<KeysCreate>(params).await
    }

    /// API keys, every user's or one user's (`keys.list`).
    pub async fn keys(&self, user: Option<&str>) -> Result<Vec<KeyInfo>, Error> {
        let params = KeysListParams {
            user: user.map(str::to_owned),
        };
        Ok(self.call::<KeysList>(&params).await?.keys)
    }

    /// Revokes an API key for good; false when it already was (`keys.revoke`).
    pub async fn revoke_key(&self, key_id: &str) -> Result<bool, Error> {
        let params = KeyRef {
            key_id: key_id.to_owned(),
        };
        Ok(self.call::<KeysRevoke>(&params).await?.revoked)
    }

    /// Every user (`users.list`).
    pub async fn users(&self) -> Result<Vec<UserInfo>, Error> {
        Ok(self.call::<UsersList>(&NoParams {}).await?.users)
    }

    /// Changes a user's role (`users.set_role`).
    pub async fn set_role(&self, user: &str, role: Role) -> Result<UserInfo, Error> {
        self.call::<UsersSetRole>(&SetRoleParams {
            user: user.to_owned(),
            role,
        })
        .await
    }

    /// Deletes a user with their keys and sessions; false when there was none (`users.delete`).
    pub async fn delete_user(&self, user: &str) -> Result<bool, Error> {
        let params = UserRef { user: user.to_owned() };
        Ok(self.call::<UsersDelete>(&params).await?.deleted)
    }

    /// Sets a user's password (`users.set_password`).
    pub async fn set_password(&self, user: &str, password: &str) -> Result<UserInfo, Error> {
        self.call::<UsersSetPassword>(&SetPasswordParams {
            user: user.to_owned(),
            password: password.to_owned(),
        })
        .await
    }

    /// Stores a secret encrypted; its value is never returned (`secrets.set`).
    pub async fn set_secret(&self, name: &str, value: &str) -> Result<SecretInfo, Error> {
        self.call::<SecretsSet>(&SecretSetParams {
            name: name.to_owned(),
            value: value.to_owned(),
        })
        .await
    }

    /// Names of the stored secrets (`secrets.list`).
    pub async fn secrets(&self) -> Result<Vec<SecretInfo>, Error> {
        Ok(self.call::<SecretsList>(&NoParams {}).await?.secrets)
    }

    /// Deletes a secret; false when there was none (`secrets.delete`).
    pub async fn delete_secret(&self, name: &str) -> Result<bool, Error> {
        let params = SecretRef { name: name.to_owned() };
        Ok(self.call::<SecretsDelete>(&params).await?.deleted)
    }

    /// A one-time dashboard login URL (`dashboard.link`, local owner only).
    pub async fn dashboard_link(&self) -> Result<DashboardLinkResult, Error> {
        self.call::<DashboardLink>(&NoParams {}).await
    }
}
