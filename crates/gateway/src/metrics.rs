//! The gateway's own HTTP figures for `/metrics`: requests by route template and status class, and
//! a latency histogram per route template. Labels are bounded: a route is its template
//! (`/api/v1/events/{id}`), never the path asked for, and anything unrouted counts as `other`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

/// Histogram bucket bounds, seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
/// Status classes 1xx..5xx.
const CLASSES: usize = 5;

/// The route label of requests that matched no route.
pub const OTHER: &str = "other";

struct Route {
    template: String,
    by_class: [AtomicU64; CLASSES],
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Route {
    fn new(template: String) -> Route {
        Route {
            template,
            by_class: Default::default(),
            buckets: Default::default(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
}

/// Counters per route template. Templates come from the router's own table (axum's
/// `MatchedPath`), so their number is bounded by construction; [`MAX_ROUTES`] caps it anyway.
pub struct HttpMetrics {
    routes: RwLock<HashMap<String, Arc<Route>>>,
    open_connections: AtomicU64,
}

/// Route labels at most; further templates count as `other`.
pub const MAX_ROUTES: usize = 256;

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics::new()
    }
}

impl HttpMetrics {
    /// No requests yet.
    pub fn new() -> HttpMetrics {
        HttpMetrics {
            routes: RwLock::new(HashMap::new()),
            open_connections: AtomicU64::new(0),
        }
    }

    fn route(&self, template: &str) -> Arc<Route> {
        // Counters are plain atomics: a panic elsewhere cannot leave the map inconsistent.
        if let Some(route) = self.routes.read().unwrap_or_else(PoisonError::into_inner).get(template) {
            return route.clone();
        }
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        let template = if routes.len() >= MAX_ROUTES && !routes.contains_key(template) {
            OTHER
        } else {
            template
        };
        routes
            .entry(template.to_owned())
            .or_insert_with(|| Arc::new(Route::new(template.to_owned())))
            .clone()
    }

    /// Records one answered request; `template` is the matched route (`None`: unrouted).
    pub fn record(&self, template: Option<&str>, status: u16, elapsed: Duration) {
        let route = self.route(template.unwrap_or(OTHER));
        let class = usize::from(status / 100).clamp(1, CLASSES) - 1;
        route.by_class[class].fetch_add(1, Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64();
        if let Some(bucket) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            route.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        route.count.fetch_add(1, Ordering::Relaxed);
        route
            .sum_micros
            .fetch_add(elapsed.as_micros().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
    }

    /// A TCP connection opened.
    pub fn connection_opened(&self) {
        self.open_connections.fetch_add(1, Ordering::Relaxed);
    }

    /// A TCP connection closed.
    pub fn connection_closed(&self) {
        self.open_connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Prometheus text (only routes that saw requests).
    pub fn render(&self) -> String {
        let mut routes: Vec<Arc<Route>> = self
            .routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        routes.sort_by(|a, b| a.template.cmp(&b.template));
        let mut out = String::new();
        out.push_str(
            "# HELP aiventbus_http_requests_total HTTP requests answered, by route template and status class.\n",
        );
        out.push_str("# TYPE aiventbus_http_requests_total counter\n");
        for route in &routes {
            for (class, counter) in route.by_class.iter().enumerate() {
                let value = counter.load(Ordering::Relaxed);
                if value > 0 {
                    let _ = writeln!(
                        out,
                        "aiventbus_http_requests_total{{service=\"gateway\",route=\"{}\",status=\"{}xx\"}} {value}",
                        escape(&route.template),
                        class + 1
                    );
                }
            }
        }
        out.push_str("# HELP aiventbus_http_request_duration_seconds Time to answer an HTTP request.\n");
        out.push_str("# TYPE aiventbus_http_request_duration_seconds histogram\n");
        for route in &routes {
            let count = route.count.load(Ordering::Relaxed);
            if count == 0 {
                continue;
            }
            let label = escape(&route.template);
            let mut cumulative = 0;
            for (bound, bucket) in BUCKETS.iter().zip(&route.buckets) {
                cumulative += bucket.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "aiventbus_http_request_duration_seconds_bucket{{service=\"gateway\",route=\"{label}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "aiventbus_http_request_duration_seconds_bucket{{service=\"gateway\",route=\"{label}\",le=\"+Inf\"}} {count}"
            );
            let sum = route.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "aiventbus_http_request_duration_seconds_sum{{service=\"gateway\",route=\"{label}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "aiventbus_http_request_duration_seconds_count{{service=\"gateway\",route=\"{label}\"}} {count}"
            );
        }
        out.push_str("# HELP aiventbus_http_connections Open HTTP connections.\n");
        out.push_str("# TYPE aiventbus_http_connections gauge\n");
        let _ = writeln!(
            out,
            "aiventbus_http_connections{{service=\"gateway\"}} {}",
            self.open_connections.load(Ordering::Relaxed)
        );
        out
    }
}

/// Escapes a label value (`\`, `"` and newlines).
pub fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_templates_and_unknown_paths_count_as_other() {
        let metrics = HttpMetrics::new();
        metrics.record(Some("/api/v1/events/{id}"), 200, Duration::from_micros(300));
        metrics.record(Some("/api/v1/events/{id}"), 404, Duration::from_millis(3));
        metrics.record(None, 404, Duration::from_millis(3));
        metrics.record(None, 421, Duration::from_millis(1));
        let text = metrics.render();
        assert!(text.contains(
            "aiventbus_http_requests_total{service=\"gateway\",route=\"/api/v1/events/{id}\",status=\"2xx\"} 1"
        ));
        assert!(text.contains(
            "aiventbus_http_requests_total{service=\"gateway\",route=\"/api/v1/events/{id}\",status=\"4xx\"} 1"
        ));
        assert!(text.contains("aiventbus_http_requests_total{service=\"gateway\",route=\"other\",status=\"4xx\"} 2"));
        assert!(text.contains(
            "aiventbus_http_request_duration_seconds_bucket{service=\"gateway\",route=\"/api/v1/events/{id}\",le=\"0.0005\"} 1"
        ));
        assert!(text.contains(
            "aiventbus_http_request_duration_seconds_bucket{service=\"gateway\",route=\"/api/v1/events/{id}\",le=\"0.005\"} 2"
        ));
        assert!(text.contains(
            "aiventbus_http_request_duration_seconds_count{service=\"gateway\",route=\"/api/v1/events/{id}\"} 2"
        ));
        // The number of labels is bounded.
        for index in 0..(MAX_ROUTES + 5) {
            metrics.record(Some(&format!("/t/{index}")), 200, Duration::from_millis(1));
        }
        let routes = metrics.render().lines().filter(|l| l.contains("_count{")).count();
        assert!(routes <= MAX_ROUTES, "{routes}");
    }
}
