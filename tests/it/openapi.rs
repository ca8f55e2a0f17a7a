//! The OpenAPI document (`src/http/openapi.rs`): complete (every routed path and method is
//! in it, and every operation in it is routed, public exactly where no token is asked),
//! valid OpenAPI 3.1 (the OpenAPI Initiative's JSON Schema for 3.1, every component schema
//! a valid JSON Schema 2020-12, every `$ref` resolving, parsed by the typed `oas3` model),
//! true to the responses (real bodies validate against the schema the document gives for
//! their status), and served with its docs page (assets compiled in, nothing from outside).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use axum::response::IntoResponse;
use chrono::{TimeZone, Utc};
use pbxbridge::calls::{CallRecord, CallStatus, Direction, Source, store};
use pbxbridge::http::error::ApiError;
use pbxbridge::http::openapi;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support;

const TOKEN: &str = "openapi-test-token";
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn doc() -> Value {
    serde_json::to_value(openapi::document()).unwrap()
}

/// `(path, method)` of every operation in the document.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            if item.get(m).is_some() {
                out.insert((path.clone(), m.to_string()));
            }
        }
    }
    out
}

/// `(path, method)` of every `.route("PATH", get(..).post(..))` in `src/http/**/*.rs`: the
/// routes the router serves, but the web console's HTML pages (`src/http/console/`), which
/// are not API. A route added another way (`nest`, `route_service`, a fallback)
/// fails here, so this scan is extended with it.
fn routed() -> BTreeSet<(String, String)> {
    let mut files = Vec::new();
    collect_rs(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http"),
        &mut files,
    );
    let method =
        regex::Regex::new(r"\b(get|put|post|delete|options|head|patch|trace)\s*\(").unwrap();
    let mut out = BTreeSet::new();
    let console = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http/console");
    for file in files {
        if file.starts_with(&console) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for other in [".nest(", ".nest_service(", ".route_service(", ".fallback("] {
            assert!(
                !text.contains(other),
                "{}: routes added with {other} are not scanned by tests/it/openapi.rs: extend it",
                file.display()
            );
        }
        let mut rest = text.as_str();
        while let Some(at) = rest.find(".route(") {
            let call = &rest[at + ".route(".len()..];
            // The call's arguments: up to the matching parenthesis.
            let mut depth = 1;
            let mut end = call.len();
            for (i, c) in call.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let args = &call[..end];
            let path = args
                .split('"')
                .nth(1)
                .unwrap_or_else(|| panic!("{}: .route( without a literal path", file.display()));
            let handlers = &args[args.find(',').expect("route has handlers")..];
            let mut any = false;
            for m in method.captures_iter(handlers) {
                out.insert((path.to_string(), m[1].to_string()));
                any = true;
            }
            assert!(any, "{}: no method in .route({args})", file.display());
            rest = &call[end..];
        }
    }
    out
}

fn collect_rs(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect_rs(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_routed_path_and_method_is_documented_and_nothing_else() {
    let doc = doc();
    let documented = documented(&doc);
    let routed = routed();
    assert!(
        routed.len() >= 25,
        "the route scan found too little: {routed:?}"
    );
    let missing: Vec<_> = routed.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes served but missing from the OpenAPI document (add a #[utoipa::path] stub in \
         src/http/openapi.rs and list it in ApiDoc's paths): {missing:?}"
    );
    let extra: Vec<_> = documented.difference(&routed).collect();
    assert!(
        extra.is_empty(),
        "operations in the OpenAPI document that no route serves: {extra:?}"
    );
}

/// Every `$ref` in `v`.
fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => out.push(r),
                    _ => refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[test]
fn the_document_is_valid_openapi_3_1() {
    let doc = doc();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));

    // The OpenAPI Initiative's JSON Schema of OpenAPI 3.1 (tests/fixtures/openapi-3.1/).
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(support::fixtures().join("openapi-3.1/schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "not valid OpenAPI 3.1: {errors:#?}");

    // Schema Objects are JSON Schema 2020-12 (OpenAPI 3.1's dialect).
    for (name, s) in doc["components"]["schemas"].as_object().unwrap() {
        if let Err(e) = jsonschema::draft202012::meta::validate(s) {
            panic!("components.schemas.{name} is not a valid JSON Schema: {e}");
        }
    }

    // Every reference resolves inside the document.
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external $ref {r}"));
        assert!(
            doc.pointer(pointer).is_some(),
            "$ref {r} resolves to nothing"
        );
    }

    // Operations: unique ids, every path template parameter declared, a tag, responses.
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let templated: BTreeSet<&str> = path
            .split('{')
            .skip(1)
            .filter_map(|s| s.split('}').next())
            .collect();
        for m in METHODS {
            let Some(op) = item.get(m) else { continue };
            let id = op["operationId"].as_str().expect("operationId");
            assert!(ids.insert(id.to_string()), "operationId {id} twice");
            assert!(
                id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "operationId {id}"
            );
            assert!(
                op["tags"].as_array().is_some_and(|t| !t.is_empty()),
                "{m} {path}: no tag"
            );
            assert!(op["summary"].is_string(), "{m} {path}: no summary");
            let declared: BTreeSet<&str> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .map(|p| p["name"].as_str().unwrap())
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(templated, declared, "{m} {path}: path parameters");
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('2') || s == "101"),
                "{m} {path}"
            );
            // Every JSON error response is the ApiError shape (but a degraded `/health`).
            for (status, r) in responses {
                if (status.starts_with('4') || status.starts_with('5'))
                    && path != "/health"
                    && let Some(s) = r["content"]["application/json"]["schema"].as_object()
                {
                    assert_eq!(
                        s["$ref"], "#/components/schemas/ErrorBody",
                        "{m} {path} {status}"
                    );
                }
            }
            // Security: explicit on every operation; none exactly on the public paths.
            let security = op["security"].as_array().expect("security");
            assert_eq!(
                security.is_empty(),
                openapi::PUBLIC.contains(&path.as_str()),
                "{m} {path}: security {security:?}"
            );
            if !security.is_empty() {
                assert!(responses.contains_key("401"), "{m} {path}: no 401");
            }
        }
    }

    // And the typed OpenAPI 3.1 model reads it.
    let spec = oas3::from_json(serde_json::to_string(&doc).unwrap()).unwrap();
    assert_eq!(spec.openapi, "3.1.0");
    assert!(spec.validate_version().is_ok());
    assert_eq!(
        spec.paths.as_ref().map(|p| p.len()),
        doc["paths"].as_object().map(|p| p.len())
    );
}

/// Validates `body` against what the document says `method path` answers with `status` as
/// JSON. Panics with the errors.
fn check_body(doc: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not in the document");
    let resp = &op["responses"][status.to_string()];
    assert!(
        resp.is_object(),
        "{method} {path} answered {status}, which the document does not list"
    );
    let schema = resp["content"]["application/json"]["schema"].clone();
    assert!(
        schema.is_object(),
        "{method} {path} {status}: no JSON schema in the document"
    );
    let mut root = json!({"components": doc["components"].clone()});
    for (k, v) in schema.as_object().unwrap() {
        root[k] = v.clone();
    }
    let validator = jsonschema::draft202012::new(&root).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status}: the body does not match the document: {errors:#?}\nbody: {body:#}"
    );
}

#[tokio::test]
async fn every_api_error_body_is_the_documented_shape() {
    let doc = doc();
    let errors = [
        ApiError::bad_param("limit", "bad"),
        ApiError::BadRequest {
            field: None,
            message: "not JSON".into(),
        },
        ApiError::Unauthorized,
        ApiError::Forbidden("no".into()),
        ApiError::NotFound("call x".into()),
        ApiError::Conflict {
            field: Some("extension".into()),
            message: "exists".into(),
        },
        ApiError::invalid("password", "too short"),
        ApiError::TooManyRequests { retry_after: 30 },
        ApiError::Upstream("down".into()),
        ApiError::Unavailable("off".into()),
        ApiError::Internal("boom".into()),
    ];
    let mut root = json!({"components": doc["components"].clone()});
    root["$ref"] = json!("#/components/schemas/ErrorBody");
    let validator = jsonschema::draft202012::new(&root).unwrap();
    let mut codes = BTreeSet::new();
    for e in errors {
        let resp = e.into_response();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(validator.is_valid(&body), "{body}");
        codes.insert(body["error"]["code"].as_str().unwrap().to_string());
    }
    // Every code the document names is one ApiError produces, and the other way.
    let documented: BTreeSet<String> = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(codes, documented);
}

fn call(i: i64) -> CallRecord {
    let start = Utc.with_ymd_and_hms(2026, 11, 20, 8, 0, 0).unwrap() + chrono::Duration::minutes(i);
    let mut r = CallRecord::new(
        Source::Asterisk,
        &format!("1795000000.{i}"),
        Direction::Inbound,
        start,
    );
    r.from_number = Some("+998901234567".into());
    r.to_number = Some("712345001".into());
    r.extension = Some("1001".into());
    r.answer_time = Some(start + chrono::Duration::seconds(5));
    r.end_time = Some(start + chrono::Duration::seconds(30));
    r.duration = 30;
    r.billsec = 25;
    r.status = Some(CallStatus::Answered);
    r.state = pbxbridge::calls::CallState::Ended;
    r
}

/// Runs the API and checks the document against it: served at `/openapi.json` behind the
/// token; every documented operation routed (never 404 or 405) and asking for a token
/// exactly where the document says; real bodies matching the documented schemas; the docs
/// page and its compiled-in assets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_api_matches_its_document() {
    let db = support::sqlite().await;
    let recs = vec![call(1), call(2)];
    store::upsert_many(&db.db, &recs).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let include = dir.path().join("pjsip_extensions.conf");
    let running = support::daemon_without_asterisk(
        &db,
        &[
            "--api-tokens",
            TOKEN,
            "--pjsip-include-path",
            include.to_str().unwrap(),
        ],
    )
    .await;
    let base = format!("http://{}", running.addr);
    let http = reqwest::Client::new();
    let doc = doc();

    // The document itself: needs the token, and is the one the code generates.
    let r = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = http
        .get(format!("{base}/openapi.json"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    assert_eq!(r.json::<Value>().await.unwrap(), doc);

    // Every documented operation is routed; without a token, 401 exactly where the
    // document asks for one.
    let samples: BTreeMap<&str, &str> = [
        ("id", "00000000-0000-4000-8000-000000000000"),
        ("extension", "1001"),
        ("call_id", "1795000000.1"),
        ("asset", "docs.js"),
    ]
    .into();
    for (path, method) in documented(&doc) {
        let mut url = path.clone();
        for (name, value) in &samples {
            url = url.replace(&format!("{{{name}}}"), value);
        }
        assert!(
            !url.contains('{'),
            "no sample value for a parameter of {path}"
        );
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let status = http
            .request(m, format!("{base}{url}"))
            .send()
            .await
            .unwrap()
            .status();
        assert!(
            status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED
                || path == "/docs/{asset}",
            "{method} {url}: {status}: documented but not routed"
        );
        let public = doc["paths"][&path][&method]["security"]
            .as_array()
            .unwrap()
            .is_empty();
        assert_eq!(
            status == StatusCode::UNAUTHORIZED,
            !public,
            "{method} {url} without a token answered {status}"
        );
    }

    // Real bodies match the documented schemas.
    let id = recs[0].id.to_string();
    let get = |path: String| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let r = http
                .get(format!("{base}{path}"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    for (template, path) in [
        ("/health", "/health".to_string()),
        ("/auth/me", "/auth/me".into()),
        ("/calls", "/calls".into()),
        ("/calls", "/calls?limit=0".into()),
        ("/calls", "/calls?direction=sideways".into()),
        ("/calls/active", "/calls/active".into()),
        ("/calls/{id}", format!("/calls/{id}")),
        ("/calls/{id}", "/calls/not-a-uuid".into()),
        (
            "/calls/{id}",
            "/calls/00000000-0000-4000-8000-000000000000".into(),
        ),
        ("/stats/calls", "/stats/calls?groupBy=hour".into()),
        ("/stats/calls", "/stats/calls?groupBy=week".into()),
        ("/extensions", "/extensions".into()),
        (
            "/extensions/by-number/{extension}",
            "/extensions/by-number/9999".into(),
        ),
        ("/kerio/auth/verify", "/kerio/auth/verify".into()),
        ("/kavkom/auth/verify", "/kavkom/auth/verify".into()),
    ] {
        let (status, body) = get(path.clone()).await;
        check_body(&doc, "get", template, status, &body);
    }
    let (status, body) = get("/calls".into()).await;
    assert_eq!((status, body["total"].as_i64()), (200, Some(2)));

    // Extensions: create (with a generated password), read, patch, status, errors.
    let send = |m: Method, path: &str, body: Value| {
        http.request(m, format!("{base}{path}"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
    };
    let r = send(
        Method::POST,
        "/extensions",
        json!({"extension": "1001", "displayName": "Aziza", "codecs": "ulaw,alaw"}),
    )
    .await
    .unwrap();
    let status = r.status().as_u16();
    let created: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{created}");
    assert!(created["password"].is_string());
    check_body(&doc, "post", "/extensions", status, &created);
    let ext_id = created["id"].as_str().unwrap().to_string();
    for (m, path, body) in [
        (
            Method::POST,
            "/extensions".to_string(),
            json!({"extension": "1001"}),
        ),
        (
            Method::POST,
            "/extensions".into(),
            json!({"extension": "x"}),
        ),
        (Method::POST, "/extensions".into(), json!([1])),
        (
            Method::PATCH,
            format!("/extensions/{ext_id}"),
            json!({"displayName": "Aziza K", "codecs": ["g722"]}),
        ),
        (
            Method::PUT,
            format!("/extensions/{ext_id}"),
            json!({"extension": "1001", "maxContacts": 2}),
        ),
    ] {
        let r = send(m.clone(), &path, body).await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        let template = if path == "/extensions" {
            "/extensions"
        } else {
            "/extensions/{id}"
        };
        check_body(&doc, &m.as_str().to_lowercase(), template, status, &body);
    }
    for (template, path) in [
        ("/extensions/{id}", format!("/extensions/{ext_id}")),
        (
            "/extensions/by-number/{extension}",
            "/extensions/by-number/1001".into(),
        ),
        (
            "/extensions/{id}/status",
            format!("/extensions/{ext_id}/status"),
        ),
        ("/extensions", "/extensions?limit=1".into()),
    ] {
        let (status, body) = get(path).await;
        check_body(&doc, "get", template, status, &body);
    }
    let r = send(
        Method::POST,
        "/kavkom/calls",
        json!({"extension": "1001", "number": "+998 90 123"}),
    )
    .await
    .unwrap();
    let status = r.status().as_u16();
    check_body(
        &doc,
        "post",
        "/kavkom/calls",
        status,
        &r.json().await.unwrap(),
    );
    let r = http
        .post(format!("{base}/auth/login"))
        .json(&json!({"username": "nobody"}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    check_body(
        &doc,
        "post",
        "/auth/login",
        status,
        &r.json().await.unwrap(),
    );

    // The docs page: no token, every file it loads is compiled in and served, nothing from
    // another host, and a policy that would block it anyway.
    let r = http.get(format!("{base}/docs")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    let html = r.text().await.unwrap();
    assert!(
        !html.contains("://"),
        "the docs page loads something from outside"
    );
    let loaded = regex::Regex::new(r#"(?:src|href)="([^"]+)""#).unwrap();
    let mut files = 0;
    for c in loaded
        .captures_iter(&html)
        .filter(|c| !c[1].starts_with("data:"))
    {
        let r = http.get(format!("{base}/{}", &c[1])).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{}", &c[1]);
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(
            ct.starts_with("text/css") || ct.starts_with("text/javascript"),
            "{}: {ct}",
            &c[1]
        );
        assert!(r.bytes().await.unwrap().len() > 100);
        files += 1;
    }
    assert_eq!(files, 4);
    let js = http
        .get(format!("{base}/docs/docs.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!js.contains("://"));
    let r = http
        .get(format!("{base}/docs/nothing.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    check_body(&doc, "get", "/docs/{asset}", 404, &r.json().await.unwrap());

    running.shutdown().await;
}
