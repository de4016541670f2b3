//! The dashboard: a single-page app (plain JavaScript, no build step, no CDN) embedded in the
//! binary and served at `/`, its assets under `/assets/…`. The page itself holds no data: it
//! connects to `/atp` with the HttpOnly session cookie that `/login?code=…` sets, and renders what
//! ATP answers with text nodes only. `/` without a valid session shows how to get one
//! (`aibus dashboard`). Every response here carries a strict Content-Security-Policy: no inline
//! script or style, nothing from elsewhere, no framing.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::app::App;

/// The policy on every dashboard response.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const INDEX: &str = include_str!("../assets/index.html");
const SIGN_IN: &str = include_str!("../assets/login.html");

/// The embedded assets: (file name, content type, bytes).
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/app.css"),
    ),
    ("favicon.svg", "image/svg+xml", include_bytes!("../assets/favicon.svg")),
];

/// The `/` and `/assets/…` routes. The state is the router's own ([`crate::http::router`]
/// provides it).
pub fn routes(app: Arc<App>) -> Router<Arc<App>> {
    let _ = app;
    Router::new().route("/", get(index)).route("/assets/{file}", get(asset))
}

/// The app for a browser with a live session; otherwise the sign-in page (401).
async fn index(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(rejection) = app.check_host(&headers) {
        return rejection.into_response();
    }
    let signed_in = match app.session_from_cookie(&headers) {
        Some(session) => app.authenticate(&session).await.is_ok(),
        None => false,
    };
    if signed_in {
        page(StatusCode::OK, "text/html; charset=utf-8", INDEX.as_bytes())
    } else {
        page(StatusCode::UNAUTHORIZED, "text/html; charset=utf-8", SIGN_IN.as_bytes())
    }
}

/// An embedded asset (no session needed: they hold no data).
async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, bytes)) => page(StatusCode::OK, content_type, bytes),
        None => page(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", b"no such asset"),
    }
}

fn page(status: StatusCode, content_type: &'static str, bytes: &'static [u8]) -> Response {
    let mut response = (status, Body::from(bytes)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    // Always revalidated: a new daemon version serves new assets at once. The pages hold no data,
    // so nothing private is cached.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pages load only same-origin files, with no inline script or style for the policy to
    /// refuse, and the script never parses data as HTML.
    #[test]
    fn pages_fit_the_content_security_policy() {
        for html in [INDEX, SIGN_IN] {
            let lower = html.to_ascii_lowercase();
            assert!(!lower.contains("style="), "inline style");
            assert!(!lower.contains("<style"), "inline stylesheet");
            assert!(!lower.contains("javascript:"), "javascript: URL");
            for (index, _) in lower.match_indices(" on") {
                let name: String = lower[index + 1..]
                    .chars()
                    .take_while(char::is_ascii_alphabetic)
                    .collect();
                let after = lower[index + 1 + name.len()..].trim_start();
                assert!(!after.starts_with('='), "inline event handler {name}");
            }
            assert!(
                !lower.contains("http://") && !lower.contains("https://"),
                "an outside URL"
            );
            for (index, _) in lower.match_indices("<script") {
                let end = lower[index..].find('>').map_or(lower.len(), |end| index + end);
                assert!(lower[index..end].contains("src=\"/assets/"), "inline script");
            }
        }
        let script = std::str::from_utf8(ASSETS[0].2).unwrap();
        for forbidden in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
        ] {
            assert!(!script.contains(forbidden), "app.js uses {forbidden}");
        }
    }

    #[test]
    fn every_asset_the_pages_name_is_embedded() {
        for html in [INDEX, SIGN_IN] {
            for (index, _) in html.match_indices("\"/assets/") {
                let rest = &html[index + "\"/assets/".len()..];
                let name = &rest[..rest.find('"').unwrap()];
                assert!(
                    ASSETS.iter().any(|(file, _, _)| *file == name),
                    "{name} is not embedded"
                );
            }
        }
    }
}
