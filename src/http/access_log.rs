//! One access-log line per HTTP request, at `info` (target `pbxbridge::access`): method, the
//! matched route (`/calls/{id}`, never the request's path or query, so no `?token=` or
//! `?ticket=` is ever logged), status, duration in ms, and who (the user's name, `token` for
//! a static API token, `-` when unauthenticated). The same request is counted in
//! `/metrics`: `pbxbridge_http_requests_total{method, route, status}` and
//! `pbxbridge_http_request_duration_seconds{method, route}`.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

use super::auth::Principal;

/// The middleware (`axum::middleware::from_fn`), applied with `Router::layer` so that the
/// matched route is known.
pub async fn access_log(matched: Option<MatchedPath>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = matched.map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let resp = next.run(req).await;
    let took = started.elapsed();
    let status = resp.status().as_u16();
    let user = resp
        .extensions()
        .get::<Principal>()
        .map_or("-", |p| p.name.as_str());
    let ms = took.as_secs_f64() * 1000.0;
    tracing::info!(
        target: "pbxbridge::access",
        method = %method,
        route = %route,
        status,
        ms = (ms * 10.0).round() / 10.0,
        user = %user,
        "HTTP"
    );
    metrics::counter!(
        "pbxbridge_http_requests_total",
        "method" => method.clone(),
        "route" => route.clone(),
        "status" => status.to_string()
    )
    .increment(1);
    metrics::histogram!(
        "pbxbridge_http_request_duration_seconds",
        "method" => method,
        "route" => route
    )
    .record(took.as_secs_f64());
    resp
}
