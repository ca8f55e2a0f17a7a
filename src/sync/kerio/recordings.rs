//! Recordings of Kerio calls: found with `Recordings.get` (newest first, down to the call's
//! start), matched to the call by number, start and length (see `map::match_recording`),
//! downloaded once with `Recordings.downloadAudioContent` into the recording cache (one
//! download per call at a time: concurrent requests share it), and the cache path kept in
//! the call's `recording_path`.

use std::path::PathBuf;

use serde_json::{Value, json};

use super::Kerio;
use super::client::KerioError;
use super::map;
use crate::calls::CallRecord;
use crate::calls::store::upsert_one;
use crate::sync::recording;

/// Items asked per `Recordings.get` page.
const PAGE: i64 = 200;
/// Pages looked at before giving up on finding a call's recording.
const MAX_PAGES: i64 = 50;

impl Kerio {
    /// The cached audio file of `call` and its content type, downloading it first when
    /// needed; `None` when the appliance has no matching recording.
    pub async fn recording_file(
        &self,
        call: &CallRecord,
    ) -> Result<Option<(PathBuf, &'static str)>, KerioError> {
        if let Some(p) = call.recording_path.as_deref().map(PathBuf::from)
            && p.starts_with(&self.recordings_dir)
            && tokio::fs::try_exists(&p).await.unwrap_or(false)
        {
            let ct = recording::content_type_for(&p.to_string_lossy());
            return Ok(Some((p, ct)));
        }
        let _turn = self.fetches.lock(&call.call_id).await;
        if let Some(p) = recording::find_cached(&self.recordings_dir, "kerio", &call.call_id).await
        {
            let ct = recording::content_type_for(&p.to_string_lossy());
            return Ok(Some((p, ct)));
        }
        let Some(found) = self.find_recording(call).await? else {
            return Ok(None);
        };
        let (fd, bytes) = self.client.download_recording(&found.id).await?;
        let name = found.name.clone().unwrap_or(fd.name);
        let ext = match recording::cache_ext(&name) {
            "bin" => "mp3",
            e => e,
        };
        let path = self
            .recordings_dir
            .join(recording::safe_file_name("kerio", &call.call_id, ext));
        recording::store(&path, &bytes, self.recordings_max_bytes).await?;
        tracing::info!(call_id = %call.call_id, recording = %found.id, bytes = bytes.len(), "Kerio recording cached");
        let mut rec = call.clone();
        rec.recording_path = Some(path.to_string_lossy().into_owned());
        rec.updated_at = chrono::Utc::now();
        upsert_one(&self.db, &rec).await?;
        let ct = recording::content_type_for(&path.to_string_lossy());
        Ok(Some((path, ct)))
    }

    /// Pages `Recordings.get` newest first until recordings start before the call; the best
    /// match, if any.
    pub async fn find_recording(
        &self,
        call: &CallRecord,
    ) -> Result<Option<map::Recording>, KerioError> {
        let floor = call
            .start_time
            .checked_sub_signed(chrono::Duration::seconds(map::MATCH_START_SECS))
            .unwrap_or(call.start_time);
        let mut seen = Vec::new();
        for page in 0..MAX_PAGES {
            let params = json!({"query": {
                "fields": ["ID", "NAME", "EXTENSION", "CALLER_ID", "DURATION", "STARTED"],
                "orderBy": [{"columnName": "STARTED", "direction": "Desc"}],
                "start": page * PAGE,
                "limit": PAGE,
            }});
            let result = self.client.call("Recordings.get", params).await?;
            let items = result
                .get("recordingList")
                .and_then(Value::as_array)
                .ok_or_else(|| KerioError::BadReply {
                    method: "Recordings.get".into(),
                    reason: "no result.recordingList list".into(),
                })?;
            let mut older = false;
            for item in items {
                match map::recording(item) {
                    Ok(r) => {
                        older |= r.started < floor;
                        seen.push(r);
                    }
                    Err(e) => tracing::warn!(item = %item, "Kerio recording item skipped: {e}"),
                }
            }
            if let Some(r) = map::match_recording(call, &seen) {
                return Ok(Some(r.clone()));
            }
            let total = result
                .get("totalItems")
                .and_then(Value::as_i64)
                .unwrap_or(i64::MAX);
            if older || (items.len() as i64) < PAGE || (page + 1) * PAGE >= total {
                break;
            }
        }
        Ok(None)
    }
}
