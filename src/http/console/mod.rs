//! The web console: askama-rendered pages with one small script, served at `/` beside the
//! API, every asset compiled into the binary (no Node toolchain, no CDN).
//!
//! Pages (public shells; every datum comes from the API with the user's token):
//! - `GET /` dashboard (`#dashboard`), `GET /console/extensions` (`#extensions`),
//!   `GET /console/live` (`#live-calls`), `GET /console/history` (`#history`),
//!   `GET /console/login`.
//! - `GET /console/assets/{name}`: `console.js`, `console.css` (immutable, versioned URLs).
//!
//! Each page takes `?lang=uz|ru|en` (default `UI_LOCALE`); nothing else in a URL.
//!
//! Security: the login JWT lives in the tab's `sessionStorage` and goes out only in the
//! `Authorization` header of `fetch` calls, never in a cookie (so no CSRF) nor a URL. Pages
//! carry a strict Content-Security-Policy (`script-src 'self'`, no inline script or style),
//! askama escapes every value rendered here, and the script writes API data with
//! `textContent` only.

pub mod i18n;

use std::collections::HashMap;

use askama::Template;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;
use crate::config::Locale;
use crate::extensions::validate::{DEFAULT_CODECS, DEFAULT_CONTEXT, KNOWN_CODECS};
use i18n::Strings;

/// The console's Content-Security-Policy: only this origin's script, style, fetch and
/// WebSocket; recordings play from `blob:` URLs; no frames, plugins or inline code.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; media-src 'self' blob:; form-action 'self'; \
base-uri 'none'; frame-ancestors 'none'";

const JS: &str = include_str!("assets/console.js");
const CSS: &str = include_str!("assets/console.css");

/// The asset version in URLs (changes with every build of a new crate version).
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The console's routes (no token: the pages hold no data).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(dashboard))
        .route("/console/login", get(login))
        .route("/console/extensions", get(extensions))
        .route("/console/live", get(live))
        .route("/console/history", get(history))
        .route("/console/assets/{name}", get(asset))
}

/// What every page shares.
struct Page {
    /// Which page (`body[data-page]`, the script's switch).
    name: &'static str,
    t: Strings,
    /// `t` as JSON, for the script.
    i18n_json: String,
    /// `?lang=xx` to keep in links when the language was chosen, else empty.
    lang_query: String,
    version: &'static str,
    /// The languages offered: (code, name, selected).
    langs: Vec<(&'static str, &'static str, bool)>,
}

impl Page {
    fn new(state: &AppState, name: &'static str, q: &HashMap<String, String>) -> Page {
        let chosen = q.get("lang").and_then(|l| i18n::parse_locale(l));
        let locale = chosen.unwrap_or(state.settings.core.ui_locale);
        let t = i18n::strings(locale);
        let i18n_json = serde_json::to_string(&t).unwrap_or_else(|_| "{}".into());
        let langs = [
            (Locale::Uz, "O'zbekcha"),
            (Locale::Ru, "Русский"),
            (Locale::En, "English"),
        ]
        .into_iter()
        .map(|(l, n)| (i18n::code(l), n, l == locale))
        .collect();
        Page {
            name,
            t,
            i18n_json,
            lang_query: chosen
                .map(|l| format!("?lang={}", i18n::code(l)))
                .unwrap_or_default(),
            version: VERSION,
            langs,
        }
    }
}

#[derive(Template)]
#[template(path = "console/login.html")]
struct LoginPage {
    p: Page,
}

#[derive(Template)]
#[template(path = "console/dashboard.html")]
struct DashboardPage {
    p: Page,
}

#[derive(Template)]
#[template(path = "console/extensions.html")]
struct ExtensionsPage {
    p: Page,
    transports: Vec<String>,
    codecs: Vec<(&'static str, bool)>,
    default_context: &'static str,
    max_contacts: i64,
}

#[derive(Template)]
#[template(path = "console/live.html")]
struct LivePage {
    p: Page,
}

#[derive(Template)]
#[template(path = "console/history.html")]
struct HistoryPage {
    p: Page,
}

fn html(t: impl Template) -> Response {
    match t.render() {
        Ok(body) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                ),
                (
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(CSP),
                ),
            ],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!("console page failed to render: {e}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn login(State(s): State<AppState>, Query(q): Query<HashMap<String, String>>) -> Response {
    html(LoginPage {
        p: Page::new(&s, "login", &q),
    })
}

async fn dashboard(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    html(DashboardPage {
        p: Page::new(&s, "dashboard", &q),
    })
}

async fn extensions(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    html(ExtensionsPage {
        p: Page::new(&s, "extensions", &q),
        transports: s.settings.pjsip.pjsip_transports.0.clone(),
        codecs: KNOWN_CODECS
            .iter()
            .map(|c| (*c, DEFAULT_CODECS.contains(c)))
            .collect(),
        default_context: DEFAULT_CONTEXT,
        max_contacts: crate::extensions::validate::MAX_CONTACTS,
    })
}

async fn live(State(s): State<AppState>, Query(q): Query<HashMap<String, String>>) -> Response {
    html(LivePage {
        p: Page::new(&s, "live", &q),
    })
}

async fn history(State(s): State<AppState>, Query(q): Query<HashMap<String, String>>) -> Response {
    html(HistoryPage {
        p: Page::new(&s, "history", &q),
    })
}

async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        "console.css" => (CSS, "text/css; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response()
}
