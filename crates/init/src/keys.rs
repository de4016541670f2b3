//! The master key and what init derives from it: every service's credentials dir (its own
//! verification key and the tokens it presents to others), init's own tokens and init's verifier.
//! The master key never leaves this process; keys and tokens reach services only through 0700
//! credentials dirs.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use aiventbus_rpc::creds::{Credentials, KEY_FILE, token_file};
use aiventbus_rpc::paths::{Paths, write_private_file};
use aiventbus_rpc::token::{Key, Minter, Verifier};
use anyhow::{Context, bail};

use crate::table::{INIT, ServiceSpec, init_scope};

/// How long a minted token is valid.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// How often tokens are minted again while init runs.
pub const REMINT_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// Reads the master key, or creates it (32 random bytes, hex, mode 0600) on first start. Refuses a
/// key file that others could read.
pub fn load_or_create_master(path: &Path) -> anyhow::Result<Key> {
    match std::fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.mode() & 0o777;
            if mode & 0o077 != 0 {
                bail!(
                    "master key {} has mode {mode:04o}: it must be readable by its owner only; \
                     run `chmod 600 {}` (and consider the key compromised if others could read it)",
                    path.display(),
                    path.display()
                );
            }
            let uid = nix::unistd::getuid().as_raw();
            if meta.uid() != uid {
                bail!(
                    "master key {} is owned by uid {}, not by us (uid {uid}); refusing to use it",
                    path.display(),
                    meta.uid()
                );
            }
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            Key::from_hex(&text).with_context(|| format!("master key {} is damaged", path.display()))
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let key = Key::generate().context("generating the master key")?;
            write_private_file(path, format!("{}\n", key.to_hex()).as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            tracing::info!(path = %path.display(), "created the master key");
            Ok(key)
        }
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// The verifier for tokens addressed to init (`init.sock`).
pub fn init_verifier(master: &Key) -> Verifier {
    Verifier::new(INIT, &master.audience_key(INIT))
}

/// A token for `audience` minted for `subject`, valid for [`TOKEN_LIFETIME`] from `now_ms`.
pub fn mint(master: &Key, subject: &str, audience: &str, scope: &[&str], now_ms: u64) -> String {
    let expires = now_ms.saturating_add(TOKEN_LIFETIME.as_millis() as u64);
    Minter::new(audience, &master.audience_key(audience)).mint(subject, scope, expires)
}

/// The token init presents to `service`.
pub fn init_token(master: &Key, service: &str, now_ms: u64) -> String {
    mint(master, INIT, service, &init_scope(service), now_ms)
}

/// Writes `<runtime>/creds/<name>/` for every service: `key` (hex of its audience key, to verify
/// tokens addressed to it) and `token.<audience>` for each entry of its `calls`.
pub fn write_credentials(paths: &Paths, master: &Key, services: &[ServiceSpec], now_ms: u64) -> anyhow::Result<()> {
    for spec in services {
        let mut files = vec![(
            KEY_FILE.to_owned(),
            format!("{}\n", master.audience_key(spec.name).to_hex()),
        )];
        if spec.secrets {
            files.push((
                aiventbus_rpc::creds::SECRETS_KEY_FILE.to_owned(),
                format!("{}\n", master.derive(crate::table::SECRETS_LABEL).to_hex()),
            ));
        }
        for (audience, scope) in spec.calls {
            files.push((
                token_file(audience),
                format!("{}\n", mint(master, spec.name, audience, scope, now_ms)),
            ));
        }
        let dir = paths.creds_dir(spec.name);
        Credentials::write(&dir, &files).with_context(|| format!("writing credentials to {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::SERVICES;
    use std::os::unix::fs::PermissionsExt;

    fn paths(dir: &Path) -> Paths {
        Paths {
            runtime_dir: dir.join("run"),
            state_dir: dir.join("state"),
            config_file: dir.join("config.toml"),
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o777
    }

    #[test]
    fn master_key_is_created_0600_and_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("master.key");
        let first = load_or_create_master(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        let second = load_or_create_master(&path).unwrap();
        assert_eq!(first.as_bytes(), second.as_bytes());
    }

    #[test]
    fn a_master_key_others_can_read_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("master.key");
        load_or_create_master(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let message = format!("{:#}", load_or_create_master(&path).unwrap_err());
        assert!(message.contains("0640") && message.contains("chmod 600"), "{message}");
    }

    #[test]
    fn credentials_are_private_and_tokens_carry_the_table_scopes() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = paths(tmp.path());
        paths.ensure_dirs().unwrap();
        let master = Key::generate().unwrap();
        let now = aiventbus_rpc::time::now_ms();
        write_credentials(&paths, &master, SERVICES, now).unwrap();

        for spec in SERVICES {
            let creds = Credentials::at(paths.creds_dir(spec.name));
            assert_eq!(mode(creds.dir()), 0o700, "{}", spec.name);
            let key_path = creds.dir().join(KEY_FILE);
            assert_eq!(mode(&key_path), 0o600);
            // The service's key verifies tokens addressed to it, e.g. the one init presents.
            let own = creds.verifier(spec.name).unwrap();
            let claims = own.verify(&init_token(&master, spec.name, now), now).unwrap();
            assert_eq!(claims.subject, INIT);
            assert!(claims.allows("system.health"));

            let mut expected_files = vec![KEY_FILE.to_owned()];
            if spec.secrets {
                expected_files.push(aiventbus_rpc::creds::SECRETS_KEY_FILE.to_owned());
                let key = creds.secrets_key().unwrap();
                assert_eq!(key.to_hex(), master.derive(crate::table::SECRETS_LABEL).to_hex());
            }
            for (audience, scope) in spec.calls {
                let path = creds.token_path(audience);
                assert_eq!(mode(&path), 0o600);
                let token = std::fs::read_to_string(&path).unwrap();
                let verifier = Verifier::new(audience, &master.audience_key(audience));
                let claims = verifier.verify(token.trim(), now).unwrap();
                assert_eq!(claims.subject, spec.name);
                assert_eq!(claims.audience, *audience);
                assert_eq!(
                    claims.scope_entries(),
                    scope.iter().map(|s| s.to_string()).collect::<Vec<_>>()
                );
                assert!(claims.expires_at_ms >= now + TOKEN_LIFETIME.as_millis() as u64);
                // Another audience's key does not verify it.
                let other = Verifier::new(audience, &master.audience_key("someone-else"));
                assert!(other.verify(token.trim(), now).is_err());
                expected_files.push(token_file(audience));
            }
            let mut files: Vec<String> = std::fs::read_dir(creds.dir())
                .unwrap()
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            files.sort();
            expected_files.sort();
            assert_eq!(files, expected_files, "{}", spec.name);
        }
    }

    #[test]
    fn init_tokens_verify_with_the_service_key_and_init_verifier_accepts_service_tokens() {
        let master = Key::generate().unwrap();
        let now = aiventbus_rpc::time::now_ms();
        let bus = Verifier::new("bus", &master.audience_key("bus"));
        let claims = bus.verify(&init_token(&master, "bus", now), now).unwrap();
        assert!(claims.allows("events.publish"));
        assert!(!claims.allows("events.list"));
        let to_init = mint(&master, "gateway", INIT, &["system.services"], now);
        assert!(
            init_verifier(&master)
                .verify(&to_init, now)
                .unwrap()
                .allows("system.services")
        );
    }
}
