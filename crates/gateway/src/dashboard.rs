//! The dashboard: a single-page app served at `/` with its assets under `/assets/…`. Its routes
//! are mounted by [`crate::http::router`], which provides the state.

use std::sync::Arc;

use axum::Router;

use crate::app::App;

/// The `/` and `/assets/…` routes.
pub fn routes(app: Arc<App>) -> Router<Arc<App>> {
    let _ = app;
    Router::new()
}
