//! Serving a recording to the UI: the audio is fetched once from the hosted PBX into a
//! cache file (`RECORDINGS_DIR`, else a folder under the system temp dir), then served by
//! tower-http's `ServeFile`, which handles `Range` (206), `If-Modified-Since` and HEAD.

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{HeaderValue, Request, header};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt;
use tower_http::services::ServeFile;

/// The cache folder: `RECORDINGS_DIR`, else `$TMPDIR/pbxbridge-recordings`.
pub fn cache_dir(recordings_dir: Option<&Path>) -> PathBuf {
    recordings_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| std::env::temp_dir().join("pbxbridge-recordings"))
}

/// A file name safe for the cache (anything but `[A-Za-z0-9._-]` becomes `_`).
pub fn safe_file_name(source: &str, id: &str, ext: &str) -> String {
    let clean = |s: &str| {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect::<String>()
    };
    format!("{}-{}.{}", clean(source), clean(id), clean(ext))
}

/// Writes `bytes` to `path` atomically (temporary file, then rename).
pub async fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let tmp = path.with_extension("part");
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, path).await
}

/// Serves the cached file at `path` for `req` (its `Range` and conditional headers are
/// honoured), with `content_type` (e.g. `audio/mpeg`, `audio/wav`).
pub async fn serve(path: &Path, content_type: &str, req: Request<Body>) -> Response {
    let mime: mime::Mime = content_type
        .parse()
        .unwrap_or(mime::APPLICATION_OCTET_STREAM);
    match ServeFile::new_with_mime(path, &mime).oneshot(req).await {
        Ok(mut resp) => {
            resp.headers_mut()
                .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            resp.map(Body::new).into_response()
        }
        Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Content type of a recording from its file name (`.mp3` → audio/mpeg, `.wav` → audio/wav,
/// `.ogg` → audio/ogg, else application/octet-stream).
pub fn content_type_for(name: &str) -> &'static str {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".mp3") {
        "audio/mpeg"
    } else if lower.ends_with(".wav") {
        "audio/wav"
    } else if lower.ends_with(".ogg") || lower.ends_with(".opus") {
        "audio/ogg"
    } else {
        "application/octet-stream"
    }
}
