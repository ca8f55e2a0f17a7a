//! The recordings cache and serving a recording to the UI: the audio is fetched once from
//! the hosted PBX into a cache file (`RECORDINGS_DIR`, else a folder under the system temp
//! dir), then served by tower-http's `ServeFile`, which handles `Range` (206),
//! `If-Modified-Since` and HEAD.
//!
//! - One fetch per recording at a time ([`Fetches`]): concurrent requests for one id wait
//!   for the first, then find its file in the cache (one upstream request).
//! - Each write goes to a temp file of its own (`<name>.<uuid>.part`), renamed into place.
//! - After each write the cache is evicted by size: oldest files first (by modification
//!   time) until it holds at most `RECORDINGS_MAX_MB` (0 = keep everything).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// Extensions a cached recording may have (see [`cache_ext`]).
pub const CACHE_EXTS: [&str; 4] = ["mp3", "wav", "ogg", "bin"];

/// The cache extension for a file name or URL: `mp3`, `wav`, `ogg` (also `.opus`), else `bin`.
pub fn cache_ext(name: &str) -> &'static str {
    let path = name.split(['?', '#']).next().unwrap_or(name);
    match path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()) {
        Some(e) if e == "mp3" => "mp3",
        Some(e) if e == "wav" => "wav",
        Some(e) if e == "ogg" || e == "opus" => "ogg",
        _ => "bin",
    }
}

/// The cached file of recording `id` of `source` in `dir`, if any.
pub async fn find_cached(dir: &Path, source: &str, id: &str) -> Option<PathBuf> {
    for ext in CACHE_EXTS {
        let path = dir.join(safe_file_name(source, id, ext));
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Some(path);
        }
    }
    None
}

/// Writes `bytes` to `path` atomically (a temporary file of its own, then rename), then
/// evicts the cache folder down to `max_bytes` (0 = no limit), never removing `path`.
pub async fn store(path: &Path, bytes: &[u8], max_bytes: u64) -> std::io::Result<()> {
    let dir = path.parent().map(Path::to_path_buf);
    if let Some(dir) = &dir {
        tokio::fs::create_dir_all(dir).await?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.part", uuid::Uuid::new_v4().simple()));
    let tmp = PathBuf::from(tmp);
    if let Err(e) = tokio::fs::write(&tmp, bytes).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    if let Err(e) = tokio::fs::rename(&tmp, path).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    if let Some(dir) = dir
        && max_bytes > 0
    {
        match evict(&dir, max_bytes, path).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                "recordings cache over {} MB: {n} oldest files removed",
                max_bytes / (1024 * 1024)
            ),
            Err(e) => tracing::warn!("recordings cache eviction failed: {e}"),
        }
    }
    Ok(())
}

/// Removes the oldest finished files of `dir` (by modification time; `.part` files are
/// left to their writers) until the folder holds at most `max_bytes`; `keep` is never
/// removed. Returns the number removed.
pub async fn evict(dir: &Path, max_bytes: u64, keep: &Path) -> std::io::Result<usize> {
    let mut files = Vec::new();
    let mut total: u64 = 0;
    let mut rd = tokio::fs::read_dir(dir).await?;
    while let Some(e) = rd.next_entry().await? {
        let Ok(meta) = e.metadata().await else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        total = total.saturating_add(meta.len());
        let path = e.path();
        if path.extension().is_some_and(|x| x == "part") || path == keep {
            continue;
        }
        let modified = meta.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH);
        files.push((modified, meta.len(), path));
    }
    files.sort();
    let mut removed = 0;
    for (_, len, path) in files {
        if total <= max_bytes {
            break;
        }
        if tokio::fs::remove_file(&path).await.is_ok() {
            total = total.saturating_sub(len);
            removed += 1;
        }
    }
    Ok(removed)
}

/// One fetch per key at a time: [`Fetches::lock`] waits while another task holds the key.
/// A holder fetches and caches; the waiters then find the cached file. Entries are removed
/// when their last holder is done, so the map holds only fetches in progress.
#[derive(Debug, Default)]
pub struct Fetches {
    keys: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while fetching one key (see [`Fetches::lock`]).
#[derive(Debug)]
pub struct FetchGuard<'a> {
    fetches: &'a Fetches,
    key: String,
    lock: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Fetches {
    /// Waits for the key's turn.
    pub async fn lock(&self, key: &str) -> FetchGuard<'_> {
        let m = {
            let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            keys.entry(key.to_string()).or_default().clone()
        };
        let lock = m.lock_owned().await;
        FetchGuard {
            fetches: self,
            key: key.to_string(),
            lock: Some(lock),
        }
    }

    /// Keys being fetched or waited for.
    pub fn in_flight(&self) -> usize {
        self.keys.lock().map(|k| k.len()).unwrap_or(0)
    }
}

impl Drop for FetchGuard<'_> {
    fn drop(&mut self) {
        drop(self.lock.take());
        let mut keys = self.fetches.keys.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map holds it: nobody waits.
        if keys
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            keys.remove(&self.key);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sync_recordings_cache_evicts_oldest_by_size() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..5 {
            let p = dir.path().join(format!("kavkom-{i}.mp3"));
            store(&p, &vec![0u8; 400 * 1024], 0).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let newest = dir.path().join("kavkom-5.mp3");
        store(&newest, &vec![0u8; 400 * 1024], 1024 * 1024)
            .await
            .unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["kavkom-4.mp3", "kavkom-5.mp3"]);
    }

    #[tokio::test]
    async fn sync_fetches_map_holds_only_fetches_in_progress() {
        let f = Fetches::default();
        {
            let _g = f.lock("a").await;
            assert_eq!(f.in_flight(), 1);
        }
        assert_eq!(f.in_flight(), 0);
    }
}
