//! Capability tokens: minted by init with a per-audience key derived from the master key, narrowed
//! by anyone who holds them (macaroon-style chained HMAC), verified in constant time by the audience.
//!
//! Wire form: `v1.<root>[.<caveat>]*.<sig>`, each part base64url without padding. `root` is JSON
//! `{sub, aud, scope, exp, nonce}`; each caveat is a `key=value` string (`scope=a.b,c.*`,
//! `exp=<unix ms>`, or a binding such as `action=act_…`). `sig0 = HMAC(K_aud, "v1." + root)`,
//! `sig_i = HMAC(sig_{i-1}, caveat_i)`. A holder can append caveats (recomputing the chain from the
//! last signature) but cannot remove one or change the root without the audience key.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Length of keys and signatures in bytes.
pub const KEY_LEN: usize = 32;
const PREFIX: &str = "v1.";
const KEY_LABEL: &[u8] = b"aiventbus/token-key/v1/";

/// Why a token was refused. The messages are safe to send to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token at all.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The signature does not verify.
    #[error("invalid token signature")]
    BadSignature,
    /// Addressed to another service.
    #[error("token is for {0}, not this service")]
    WrongAudience(String),
    /// Past its expiry.
    #[error("token expired")]
    Expired,
    /// A caveat this verifier does not understand (fail closed).
    #[error("token has an unknown caveat {0:?}")]
    UnknownCaveat(String),
}

/// A 32-byte secret key.
#[derive(Clone)]
pub struct Key([u8; KEY_LEN]);

impl Key {
    /// A fresh random key.
    pub fn generate() -> std::io::Result<Key> {
        let mut bytes = [0u8; KEY_LEN];
        getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Key(bytes))
    }

    /// Wraps raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Key {
        Key(bytes)
    }

    /// Parses the hex form written to key files.
    pub fn from_hex(text: &str) -> Result<Key, TokenError> {
        let text = text.trim();
        if text.len() != KEY_LEN * 2 {
            return Err(TokenError::Malformed("key must be 64 hex characters"));
        }
        let mut bytes = [0u8; KEY_LEN];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16)
                .map_err(|_| TokenError::Malformed("key must be hex"))?;
        }
        Ok(Key(bytes))
    }

    /// The hex form.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Raw bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Derives a subkey for `label` (HMAC-SHA256 of the label under this key).
    pub fn derive(&self, label: &[u8]) -> Key {
        let mut mac = mac_with(&self.0);
        mac.update(label);
        Key(mac.finalize().into_bytes().into())
    }

    /// The key that signs and verifies tokens addressed to `audience`.
    pub fn audience_key(&self, audience: &str) -> Key {
        let mut label = KEY_LABEL.to_vec();
        label.extend_from_slice(audience.as_bytes());
        self.derive(&label)
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(…)")
    }
}

fn mac_with(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    #[allow(clippy::expect_used)]
    <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length")
}

#[derive(Serialize, Deserialize)]
struct Root {
    sub: String,
    aud: String,
    scope: Vec<String>,
    exp: u64,
    nonce: String,
}

/// A method scope: exact names and `ns.*` wildcards; `*` allows everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope(Vec<String>);

impl Scope {
    /// A scope from entries.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(entries: I) -> Scope {
        Scope(entries.into_iter().map(Into::into).collect())
    }

    /// Whether `method` is allowed.
    pub fn allows(&self, method: &str) -> bool {
        self.0.iter().any(|entry| scope_entry_allows(entry, method))
    }

    /// Entries as given.
    pub fn entries(&self) -> &[String] {
        &self.0
    }
}

fn scope_entry_allows(entry: &str, method: &str) -> bool {
    if entry == "*" || entry == method {
        return true;
    }
    match entry.strip_suffix(".*") {
        Some(ns) => method.len() > ns.len() + 1 && method.starts_with(ns) && method.as_bytes()[ns.len()] == b'.',
        None => false,
    }
}

/// What a verified token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Who holds it.
    pub subject: String,
    /// The service it is for.
    pub audience: String,
    /// Every scope in the chain; a method must be allowed by all of them.
    pub scopes: Vec<Scope>,
    /// Earliest expiry in the chain, unix ms.
    pub expires_at_ms: u64,
    /// Bindings such as `("action", "act_…")`, for the service to check.
    pub bindings: Vec<(String, String)>,
}

impl Claims {
    /// Whether `method` is allowed by the root scope and every narrowing.
    pub fn allows(&self, method: &str) -> bool {
        self.scopes.iter().all(|scope| scope.allows(method))
    }

    /// Whether the token is still valid at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        now_ms < self.expires_at_ms
    }

    /// The value bound to `key`, if every binding of that key agrees on it.
    pub fn binding(&self, key: &str) -> Option<&str> {
        let mut values = self.bindings.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str());
        let first = values.next()?;
        values.all(|v| v == first).then_some(first)
    }

    /// The root scope as strings (for `auth.hello`'s answer).
    pub fn scope_entries(&self) -> Vec<String> {
        self.scopes.first().map(|s| s.entries().to_vec()).unwrap_or_default()
    }
}

/// Mints tokens for one audience. Held by init only (it derives the key from the master key).
pub struct Minter {
    audience: String,
    mac: HmacSha256,
}

impl Minter {
    /// A minter for tokens addressed to `audience`, signing with its audience key.
    pub fn new(audience: &str, audience_key: &Key) -> Minter {
        Minter {
            audience: audience.to_owned(),
            mac: mac_with(audience_key.as_bytes()),
        }
    }

    /// A token for `subject` allowing `scope` until `expires_at_ms`.
    pub fn mint(&self, subject: &str, scope: &[&str], expires_at_ms: u64) -> String {
        let mut nonce = [0u8; 12];
        // A failing OS RNG only weakens uniqueness of the nonce, not the signature; fall back to time.
        if getrandom::fill(&mut nonce).is_err() {
            nonce[..8].copy_from_slice(&crate::time::now_ms().to_le_bytes());
        }
        let root = Root {
            sub: subject.to_owned(),
            aud: self.audience.clone(),
            scope: scope.iter().map(|s| (*s).to_owned()).collect(),
            exp: expires_at_ms,
            nonce: B64.encode(nonce),
        };
        // A struct of strings and integers always serializes.
        let root_json = serde_json::to_vec(&root).unwrap_or_default();
        let signed = format!("{PREFIX}{}", B64.encode(root_json));
        let mut mac = self.mac.clone();
        mac.update(signed.as_bytes());
        let sig = mac.finalize().into_bytes();
        format!("{signed}.{}", B64.encode(sig))
    }
}

/// Narrows a token by appending a caveat; needs no key. Caveats: `scope=a.b,c.*`, `exp=<ms>`,
/// or a binding `key=value`.
pub fn attenuate(token: &str, caveat: &str) -> Result<String, TokenError> {
    if !caveat.contains('=') {
        return Err(TokenError::Malformed("caveat must be key=value"));
    }
    let (body, sig_b64) = token.rsplit_once('.').ok_or(TokenError::Malformed("no signature"))?;
    let sig = decode_sig(sig_b64)?;
    let encoded = B64.encode(caveat.as_bytes());
    let mut mac = mac_with(&sig);
    mac.update(encoded.as_bytes());
    let next = mac.finalize().into_bytes();
    Ok(format!("{body}.{encoded}.{}", B64.encode(next)))
}

fn decode_sig(sig_b64: &str) -> Result<[u8; KEY_LEN], TokenError> {
    let bytes = B64
        .decode(sig_b64)
        .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
    bytes
        .try_into()
        .map_err(|_| TokenError::Malformed("signature has the wrong length"))
}

/// Verifies tokens addressed to one service. Holds only that service's audience key.
#[derive(Clone)]
pub struct Verifier {
    audience: String,
    mac: HmacSha256,
}

impl Verifier {
    /// A verifier for `audience` with its audience key.
    pub fn new(audience: &str, audience_key: &Key) -> Verifier {
        Verifier {
            audience: audience.to_owned(),
            mac: mac_with(audience_key.as_bytes()),
        }
    }

    /// The service this verifier accepts tokens for.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Checks signature, audience, expiry and caveats; returns what the token grants.
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<Claims, TokenError> {
        if token.len() > 8192 {
            return Err(TokenError::Malformed("token is too long"));
        }
        let rest = token
            .strip_prefix(PREFIX)
            .ok_or(TokenError::Malformed("unknown token version"))?;
        let mut parts = rest.split('.');
        let root_b64 = parts.next().ok_or(TokenError::Malformed("no root"))?;
        let mut tail: Vec<&str> = parts.collect();
        let sig_b64 = tail.pop().ok_or(TokenError::Malformed("no signature"))?;
        let caveats = tail;
        let presented = decode_sig(sig_b64)?;

        // Recompute the chain: the first link is keyed by the audience key, each later one by the
        // previous signature. Only the final comparison is secret-dependent, and it is constant-time.
        let mut mac = self.mac.clone();
        mac.update(&token.as_bytes()[..PREFIX.len() + root_b64.len()]);
        for caveat in &caveats {
            let sig = mac.finalize().into_bytes();
            mac = mac_with(&sig);
            mac.update(caveat.as_bytes());
        }
        mac.verify_slice(&presented).map_err(|_| TokenError::BadSignature)?;

        let root_json = B64
            .decode(root_b64)
            .map_err(|_| TokenError::Malformed("root is not base64url"))?;
        let root: Root = serde_json::from_slice(&root_json).map_err(|_| TokenError::Malformed("root is not JSON"))?;
        if root.aud != self.audience {
            return Err(TokenError::WrongAudience(root.aud));
        }
        let mut claims = Claims {
            subject: root.sub,
            audience: root.aud,
            scopes: vec![Scope(root.scope)],
            expires_at_ms: root.exp,
            bindings: Vec::new(),
        };
        for caveat_b64 in caveats {
            let raw = B64
                .decode(caveat_b64)
                .map_err(|_| TokenError::Malformed("caveat is not base64url"))?;
            let text = String::from_utf8(raw).map_err(|_| TokenError::Malformed("caveat is not UTF-8"))?;
            let (key, value) = text
                .split_once('=')
                .ok_or_else(|| TokenError::UnknownCaveat(text.clone()))?;
            match key {
                "scope" => claims
                    .scopes
                    .push(Scope::new(value.split(',').filter(|s| !s.is_empty()))),
                "exp" => {
                    let exp: u64 = value.parse().map_err(|_| TokenError::UnknownCaveat(text.clone()))?;
                    claims.expires_at_ms = claims.expires_at_ms.min(exp);
                }
                "action" | "run" | "session" => claims.bindings.push((key.to_owned(), value.to_owned())),
                _ => return Err(TokenError::UnknownCaveat(text)),
            }
        }
        if !claims.is_live(now_ms) {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn setup() -> (Minter, Verifier, Key) {
        let master = Key::generate().unwrap();
        let key = master.audience_key("bus");
        (Minter::new("bus", &key), Verifier::new("bus", &key), master)
    }

    #[test]
    fn minted_token_verifies_with_its_scope() {
        let (minter, verifier, _) = setup();
        let token = minter.mint("gateway", &["events.*", "topics.list"], NOW + 1000);
        let claims = verifier.verify(&token, NOW).unwrap();
        assert_eq!(claims.subject, "gateway");
        assert!(claims.allows("events.publish"));
        assert!(claims.allows("topics.list"));
        assert!(!claims.allows("topics.delete"));
        assert!(!claims.allows("eventsx.publish"));
        assert!(!claims.allows("events."));
    }

    #[test]
    fn expired_token_is_refused() {
        let (minter, verifier, _) = setup();
        let token = minter.mint("gateway", &["*"], NOW);
        assert_eq!(verifier.verify(&token, NOW), Err(TokenError::Expired));
    }

    #[test]
    fn forged_tokens_are_refused() {
        let (minter, verifier, master) = setup();
        let token = minter.mint("gateway", &["events.get"], NOW + 1000);

        // Signed with another service's key.
        let other = Minter::new("bus", &master.audience_key("exec")).mint("gateway", &["*"], NOW + 1000);
        assert_eq!(verifier.verify(&other, NOW), Err(TokenError::BadSignature));

        // Root edited to widen the scope, signature kept.
        let parts: Vec<&str> = token.split('.').collect();
        let widened_root =
            B64.encode(br#"{"sub":"gateway","aud":"bus","scope":["*"],"exp":1800000001000,"nonce":"x"}"#);
        let forged = format!("v1.{widened_root}.{}", parts[2]);
        assert_eq!(verifier.verify(&forged, NOW), Err(TokenError::BadSignature));

        // A caveat removed from an attenuated token.
        let narrowed = attenuate(&token, "exp=1800000000500").unwrap();
        let n: Vec<&str> = narrowed.split('.').collect();
        let stripped = format!("v1.{}.{}", n[1], n[3]);
        assert_eq!(verifier.verify(&stripped, NOW), Err(TokenError::BadSignature));

        // Garbage.
        assert!(verifier.verify("v1.abc", NOW).is_err());
        assert!(verifier.verify("hello", NOW).is_err());
        assert!(verifier.verify("", NOW).is_err());
    }

    #[test]
    fn wrong_audience_is_refused() {
        let master = Key::generate().unwrap();
        let key = master.audience_key("bus");
        // A token whose root says exec but signed with the bus key is still for exec.
        let token = Minter::new("exec", &key).mint("x", &["*"], NOW + 1000);
        assert_eq!(
            Verifier::new("bus", &key).verify(&token, NOW),
            Err(TokenError::WrongAudience("exec".into()))
        );
    }

    #[test]
    fn attenuation_narrows_and_cannot_widen() {
        let (minter, verifier, _) = setup();
        let token = minter.mint("policy", &["events.*"], NOW + 10_000);
        let narrowed = attenuate(&token, "scope=events.get").unwrap();
        let claims = verifier.verify(&narrowed, NOW).unwrap();
        assert!(claims.allows("events.get"));
        assert!(!claims.allows("events.publish"));

        // Adding a wider scope caveat does not widen: every scope must allow.
        let widened = attenuate(&narrowed, "scope=*").unwrap();
        let claims = verifier.verify(&widened, NOW).unwrap();
        assert!(!claims.allows("events.publish"));
        assert!(!claims.allows("system.shutdown"));

        // A later expiry does not extend, an earlier one shortens.
        let later = attenuate(&token, "exp=1900000000000").unwrap();
        assert_eq!(verifier.verify(&later, NOW).unwrap().expires_at_ms, NOW + 10_000);
        let sooner = attenuate(&token, "exp=1800000000005").unwrap();
        assert_eq!(verifier.verify(&sooner, NOW + 5), Err(TokenError::Expired));
        assert!(verifier.verify(&sooner, NOW + 4).is_ok());
    }

    #[test]
    fn bindings_and_unknown_caveats() {
        let (minter, verifier, _) = setup();
        let token = minter.mint("policy", &["actions.execute"], NOW + 10_000);
        let bound = attenuate(&token, "action=act_1").unwrap();
        assert_eq!(verifier.verify(&bound, NOW).unwrap().binding("action"), Some("act_1"));
        let conflicting = attenuate(&bound, "action=act_2").unwrap();
        assert_eq!(verifier.verify(&conflicting, NOW).unwrap().binding("action"), None);
        let unknown = attenuate(&token, "color=blue").unwrap();
        assert!(matches!(
            verifier.verify(&unknown, NOW),
            Err(TokenError::UnknownCaveat(_))
        ));
    }

    #[test]
    fn keys_round_trip_hex() {
        let key = Key::generate().unwrap();
        assert_eq!(Key::from_hex(&key.to_hex()).unwrap().as_bytes(), key.as_bytes());
        assert!(Key::from_hex("zz").is_err());
    }
}
