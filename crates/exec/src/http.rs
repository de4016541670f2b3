//! `http_request`: one client with no proxy and no automatic redirects. Every URL, the first and
//! each redirect (at most 5, followed here), is checked with `guard::net::check_url`; every address
//! a name resolves to goes through `guard::net::check_ip` in the client's own resolver, so a name
//! that resolves to a private address (DNS rebinding included) is refused at connect time. The
//! whole exchange has one deadline and the body a size cap.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use aiventbus_guard::Settings;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Map, Value, json};

/// Redirects followed at most.
pub const MAX_REDIRECTS: usize = 5;
/// Response headers passed back.
const SAFE_HEADERS: [&str; 8] = [
    "content-type",
    "content-length",
    "content-encoding",
    "content-language",
    "location",
    "date",
    "last-modified",
    "etag",
];
/// Request headers the caller may not set: the client derives them, or they steer proxies.
const FORBIDDEN_HEADERS: [&str; 9] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-connection",
];
/// Request headers dropped when a redirect leaves the origin.
const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

/// Why a request failed (shown to the agent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(pub String);

fn fail(message: impl Into<String>) -> HttpError {
    HttpError(message.into())
}

/// Resolves names with the system resolver (or fixed answers), keeping only the addresses
/// `guard::net::check_ip` accepts for that name.
struct GuardedResolver {
    settings: Arc<Settings>,
    fixed: Arc<HashMap<String, Vec<IpAddr>>>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let settings = Arc::clone(&self.settings);
        let fixed = Arc::clone(&self.fixed);
        let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        Box::pin(async move {
            let found: Vec<IpAddr> = match fixed.get(&host) {
                Some(addresses) => addresses.clone(),
                None => tokio::net::lookup_host((host.as_str(), 0))
                    .await?
                    .map(|address| address.ip())
                    .collect(),
            };
            let mut refused = None;
            let mut kept = Vec::new();
            for ip in found {
                match aiventbus_guard::net::check_ip(&settings, &host, ip) {
                    Ok(()) => kept.push(SocketAddr::new(ip, 0)),
                    Err(refusal) => refused = Some(refusal),
                }
            }
            if kept.is_empty() {
                let reason = match refused {
                    Some(refusal) => format!("refused at execution ({}): {}", refusal.rule, refusal.reason),
                    None => format!("{host} has no address"),
                };
                return Err(reason.into());
            }
            let addrs: Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

/// The HTTP side of exec.
pub struct Http {
    client: reqwest::Client,
    settings: Arc<Settings>,
    timeout: Duration,
    max_body: u64,
}

impl Http {
    /// A client checking against `settings`; `fixed` answers names without asking DNS (like
    /// /etc/hosts; the answers are checked all the same).
    pub fn new(
        settings: Arc<Settings>,
        fixed: HashMap<String, Vec<IpAddr>>,
        timeout: Duration,
        max_body: u64,
    ) -> Result<Http, reqwest::Error> {
        // rustls needs a process-wide crypto provider; ring keeps the build free of aws-lc. Err
        // means one is installed already, which is what we want.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let resolver = GuardedResolver {
            settings: Arc::clone(&settings),
            fixed: Arc::new(fixed),
        };
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(resolver))
            .connect_timeout(timeout)
            .user_agent(concat!("aiventbus-exec/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Http {
            client,
            settings,
            timeout,
            max_body,
        })
    }

    /// Carries out one `http_request`: `{status, url, headers, body | body_b64, truncated,
    /// redirects}`; `ok` is a 2xx or 3xx answer.
    pub async fn request(&self, params: &Map<String, Value>) -> Result<(bool, Value), HttpError> {
        let request = parse(params)?;
        match tokio::time::timeout(self.timeout, self.exchange(request)).await {
            Ok(result) => result,
            Err(_) => Err(fail(format!("timed out after {}", humantime_secs(self.timeout)))),
        }
    }

    async fn exchange(&self, request: Parsed) -> Result<(bool, Value), HttpError> {
        let Parsed {
            mut method,
            mut url,
            mut headers,
            mut body,
        } = request;
        let mut redirects = Vec::new();
        loop {
            self.check(&url)?;
            let mut builder = self.client.request(method.clone(), url.clone());
            for (name, value) in &headers {
                builder = builder.header(name.as_str(), value.as_str());
            }
            if let Some(body) = &body {
                builder = builder.body(body.clone());
            }
            let mut response = builder.send().await.map_err(|error| fail(describe(&error)))?;
            let status = response.status();
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            if status.is_redirection()
                && let Some(location) = location
            {
                if redirects.len() >= MAX_REDIRECTS {
                    return Err(fail(format!("more than {MAX_REDIRECTS} redirects; stopped at {url}")));
                }
                let next = url
                    .join(&location)
                    .map_err(|error| fail(format!("redirect to a bad location {location:?}: {error}")))?;
                if matches!(status, StatusCode::SEE_OTHER)
                    || (matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND) && method == Method::POST)
                {
                    if method != Method::HEAD {
                        method = Method::GET;
                    }
                    body = None;
                    headers.retain(|(name, _)| name != "content-type");
                }
                if next.origin() != url.origin() {
                    headers.retain(|(name, _)| !CREDENTIAL_HEADERS.contains(&name.as_str()));
                }
                redirects.push(next.to_string());
                url = next;
                continue;
            }

            let mut kept = Map::new();
            for name in SAFE_HEADERS {
                if let Some(value) = response.headers().get(name).and_then(|value| value.to_str().ok()) {
                    kept.insert(name.to_owned(), Value::String(value.to_owned()));
                }
            }
            let mut bytes = Vec::new();
            let mut truncated = false;
            while let Some(chunk) = response.chunk().await.map_err(|error| fail(describe(&error)))? {
                let room = self.max_body.saturating_sub(bytes.len() as u64) as usize;
                if chunk.len() > room {
                    bytes.extend_from_slice(&chunk[..room]);
                    truncated = true;
                    break;
                }
                bytes.extend_from_slice(&chunk);
            }
            let mut result = json!({
                "status": status.as_u16(),
                "url": url.to_string(),
                "headers": kept,
                "truncated": truncated,
                "redirects": redirects,
            });
            match String::from_utf8(bytes) {
                Ok(text) => result["body"] = Value::String(text),
                Err(error) => result["body_b64"] = Value::String(B64.encode(error.as_bytes())),
            }
            let ok = status.is_success() || status.is_redirection();
            return Ok((ok, result));
        }
    }

    fn check(&self, url: &Url) -> Result<(), HttpError> {
        aiventbus_guard::net::check_url(&self.settings, url.as_str())
            .map(|_| ())
            .map_err(|refusal| fail(format!("refused at execution ({}): {}", refusal.rule, refusal.reason)))
    }
}

struct Parsed {
    method: Method,
    url: Url,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
}

fn parse(params: &Map<String, Value>) -> Result<Parsed, HttpError> {
    let method = match params.get("method") {
        None | Some(Value::Null) => Method::GET,
        Some(Value::String(text)) => match text.to_ascii_uppercase().as_str() {
            "GET" => Method::GET,
            "HEAD" => Method::HEAD,
            "POST" => Method::POST,
            "PUT" => Method::PUT,
            "PATCH" => Method::PATCH,
            "DELETE" => Method::DELETE,
            "OPTIONS" => Method::OPTIONS,
            _ => {
                return Err(fail(format!(
                    "method: {text:?} is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
                )));
            }
        },
        Some(_) => return Err(fail("method: must be a string")),
    };
    let url = match params.get("url") {
        Some(Value::String(text)) => Url::parse(text).map_err(|error| fail(format!("url: {text:?}: {error}")))?,
        Some(_) => return Err(fail("url: must be a string")),
        None => return Err(fail("url: required")),
    };
    let mut headers = Vec::new();
    match params.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(given)) => {
            for (name, value) in given {
                let lower = name.to_ascii_lowercase();
                let Value::String(value) = value else {
                    return Err(fail(format!("headers.{name}: must be a string")));
                };
                if FORBIDDEN_HEADERS.contains(&lower.as_str()) {
                    return Err(fail(format!("headers.{name}: may not be set")));
                }
                if reqwest::header::HeaderName::from_bytes(lower.as_bytes()).is_err()
                    || reqwest::header::HeaderValue::from_str(value).is_err()
                {
                    return Err(fail(format!("headers.{name}: not a valid header")));
                }
                headers.push((lower, value.clone()));
            }
        }
        Some(_) => return Err(fail("headers: must be an object of strings")),
    }
    let body = match params.get("body") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.clone().into_bytes()),
        Some(value) => {
            if !headers.iter().any(|(name, _)| name == "content-type") {
                headers.push(("content-type".into(), "application/json".into()));
            }
            Some(value.to_string().into_bytes())
        }
    };
    Ok(Parsed {
        method,
        url,
        headers,
        body,
    })
}

/// A transport error with its causes (the resolver's refusal is one of them).
fn describe(error: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut text = if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        "cannot connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = error.source();
    let mut last = String::new();
    while let Some(cause) = source {
        let message = cause.to_string();
        if message != last {
            text.push_str(": ");
            text.push_str(&message);
            last = message;
        }
        source = cause.source();
    }
    text
}

fn humantime_secs(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_checked_by_name() {
        let params = |value: Value| value.as_object().unwrap().clone();
        let error = |value: Value| parse(&params(value)).err().unwrap().0;
        assert!(error(json!({"method": "GET"})).starts_with("url"));
        assert!(error(json!({"url": "not a url"})).starts_with("url"));
        assert!(error(json!({"url": "http://x/", "method": "BREW"})).starts_with("method"));
        assert!(error(json!({"url": "http://x/", "headers": {"Host": "y"}})).starts_with("headers.Host"));
        assert!(error(json!({"url": "http://x/", "headers": {"A": 1}})).starts_with("headers.A"));
        let parsed = parse(&params(json!({"url": "http://x/", "body": {"a": 1}}))).unwrap();
        assert_eq!(parsed.method, Method::GET);
        assert_eq!(parsed.body.as_deref(), Some(&br#"{"a":1}"#[..]));
        assert!(
            parsed
                .headers
                .contains(&("content-type".into(), "application/json".into()))
        );
    }
}
