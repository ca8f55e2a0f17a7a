//! One sync run of a hosted PBX, whatever the adapter: the adapter fetches pages and maps
//! items; the run checks every mapped row, writes each page in one transaction, counts
//! truly, and moves the watermark by one rule.
//!
//! - Checks ([`check_record`], [`check_item`]): a row whose times or durations are out of
//!   range, whose text holds a NUL byte or is huge, or whose item is not what the mapper
//!   understands is logged once with the reason, counted in `skipped`, stored nowhere, and
//!   the run goes on.
//! - Writes ([`Run::write`]): rows already stored with the same raw item are left alone (not
//!   counted as updated); the others are written in one transaction (`upsert_many`), new
//!   ones counted `inserted`, changed ones `updated`. A failed page counts its rows `failed`
//!   and stops the run (what was committed before stays).
//! - Watermark ([`Scope`], [`Run::advance`]): only a [`Scope::Full`] run (unfiltered, over the
//!   whole open range from the watermark to now) moves it, and only forward; a
//!   [`Scope::Range`] run (a start, an end or an extension given) never does.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;

use super::SyncReport;
use super::store;
use crate::calls::{CallRecord, Source};
use crate::db::watermark::{get_watermark, set_watermark};
use crate::db::{Db, DbError};

/// Longest call accepted, in seconds (7 days): longer durations are hostile data.
pub const MAX_CALL_SECS: i64 = 7 * 24 * 3600;
/// Longest phone number / extension / call id accepted, in characters.
pub const MAX_NUMBER_CHARS: usize = 128;
/// Longest other text field accepted (status texts, recording paths), in characters.
pub const MAX_TEXT_CHARS: usize = 2048;
/// Largest raw item accepted, in bytes of its JSON (64 KiB).
pub const MAX_ITEM_BYTES: usize = 64 * 1024;
/// Distinct skipped rows remembered per run for "logged once" (beyond it, still skipped,
/// logged at debug level).
const MAX_LOGGED: usize = 10_000;

/// What a run may do with the watermark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Unfiltered, from the watermark (less an overlap) to now: may move the watermark.
    Full,
    /// A range or an extension was given: never moves the watermark.
    Range,
}

impl Scope {
    /// [`Scope::Full`] when no start, end or extension is given, else [`Scope::Range`].
    pub fn of(has_from: bool, has_to: bool, has_extension: bool) -> Scope {
        if has_from || has_to || has_extension {
            Scope::Range
        } else {
            Scope::Full
        }
    }
}

/// Earliest call start accepted (2000-01-01T00:00:00Z).
fn earliest() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Checks a raw item before mapping: its JSON is at most [`MAX_ITEM_BYTES`] and no string
/// or key in it holds a NUL byte (PostgreSQL text cannot store one). Err: the reason.
pub fn check_item(item: &Value) -> Result<(), String> {
    fn has_nul(v: &Value, depth: usize) -> bool {
        if depth > 64 {
            return true;
        }
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(a) => a.iter().any(|x| has_nul(x, depth + 1)),
            Value::Object(o) => o
                .iter()
                .any(|(k, x)| k.contains('\0') || has_nul(x, depth + 1)),
            _ => false,
        }
    }
    let size = serde_json::to_vec(item)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_ITEM_BYTES {
        return Err(format!(
            "item of {size} bytes is larger than {MAX_ITEM_BYTES}"
        ));
    }
    if has_nul(item, 0) {
        return Err("a field holds a NUL byte (or nests too deep)".into());
    }
    Ok(())
}

/// Checks a mapped row: call id present; start between 2000-01-01 and a day from `now`;
/// `duration` and `billsec` within 0..=[`MAX_CALL_SECS`] and `billsec <= duration`; answer
/// and end times not before the start nor more than [`MAX_CALL_SECS`] after it; numbers
/// within [`MAX_NUMBER_CHARS`], other text within [`MAX_TEXT_CHARS`]; no NUL byte. Err: the
/// reason. Never panics (no unchecked arithmetic).
pub fn check_record(r: &CallRecord, now: DateTime<Utc>) -> Result<(), String> {
    if r.call_id.trim().is_empty() {
        return Err("empty call id".into());
    }
    let latest = now
        .checked_add_signed(chrono::TimeDelta::days(1))
        .unwrap_or(now);
    if r.start_time < earliest() || r.start_time > latest {
        return Err(format!("start time {} out of range", r.start_time));
    }
    if !(0..=MAX_CALL_SECS).contains(&r.duration) {
        return Err(format!("duration {} s out of range", r.duration));
    }
    if !(0..=r.duration).contains(&r.billsec) {
        return Err(format!(
            "billsec {} s out of range (duration {} s)",
            r.billsec, r.duration
        ));
    }
    let ceiling = r
        .start_time
        .checked_add_signed(chrono::TimeDelta::seconds(MAX_CALL_SECS))
        .unwrap_or(r.start_time);
    for (name, t) in [("answer", r.answer_time), ("end", r.end_time)] {
        if let Some(t) = t
            && (t < r.start_time || t > ceiling)
        {
            return Err(format!("{name} time {t} out of range"));
        }
    }
    let numbers = [
        ("call id", Some(&r.call_id)),
        ("from", r.from_number.as_ref()),
        ("to", r.to_number.as_ref()),
        ("extension", r.extension.as_ref()),
        ("transferred to", r.transferred_to.as_ref()),
    ];
    for (name, v) in numbers {
        if let Some(v) = v {
            text_ok(name, v, MAX_NUMBER_CHARS)?;
        }
    }
    let texts = [
        ("hangup cause", r.hangup_cause_text.as_ref()),
        ("dial status", r.dial_status.as_ref()),
        ("recording", r.recording_path.as_ref()),
        ("origin", r.origin.as_ref()),
    ];
    for (name, v) in texts {
        if let Some(v) = v {
            text_ok(name, v, MAX_TEXT_CHARS)?;
        }
    }
    if let Some(raw) = &r.raw {
        check_item(raw)?;
    }
    Ok(())
}

fn text_ok(name: &str, v: &str, max: usize) -> Result<(), String> {
    if v.contains('\0') {
        return Err(format!("{name} holds a NUL byte"));
    }
    if v.chars().nth(max).is_some() {
        return Err(format!("{name} longer than {max} characters"));
    }
    Ok(())
}

/// An item for a log line: its JSON, cut to 200 characters.
pub fn preview(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// One sync run (see the module doc). Holds the counts; the adapter feeds it pages.
#[derive(Debug)]
pub struct Run {
    db: Db,
    source: Source,
    watermark: &'static str,
    scope: Scope,
    report: SyncReport,
    started: Instant,
    mark: Option<DateTime<Utc>>,
    logged: HashSet<u64>,
    /// Pages written so far, and `fetched` / `skipped` when the last one was written (for
    /// the per-page log line and metrics, [`super::observe::page`]).
    pages: u64,
    last_page: (u64, u64),
}

impl Run {
    /// Starts a run of `source` whose watermark is the `sync_state` row `watermark`.
    /// Errors: reading the watermark failed.
    pub async fn start(
        db: &Db,
        source: Source,
        watermark: &'static str,
        scope: Scope,
    ) -> Result<Run, DbError> {
        let mark = get_watermark(db, watermark).await?;
        Ok(Run {
            db: db.clone(),
            source,
            watermark,
            scope,
            report: SyncReport::default(),
            started: Instant::now(),
            mark,
            logged: HashSet::new(),
            pages: 0,
            last_page: (0, 0),
        })
    }

    /// The watermark when the run started (or as the run moved it).
    pub fn watermark(&self) -> Option<DateTime<Utc>> {
        self.mark
    }

    /// The run's scope.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// The counts so far.
    pub fn report(&self) -> &SyncReport {
        &self.report
    }

    /// Counts one fetched item and checks it and its mapping: `Some(record)` when it may be
    /// stored, `None` when skipped (logged once with the reason, counted in `skipped`).
    pub fn check(
        &mut self,
        item: &Value,
        mapped: impl FnOnce(&Value) -> Result<CallRecord, String>,
    ) -> Option<CallRecord> {
        self.report.fetched = self.report.fetched.saturating_add(1);
        let result = check_item(item)
            .and_then(|()| mapped(item))
            .and_then(|r| check_record(&r, Utc::now()).map(|()| r));
        match result {
            Ok(r) => Some(r),
            Err(reason) => {
                self.report.skipped = self.report.skipped.saturating_add(1);
                super::observe::error(self.source.as_str());
                self.log_skip(item, &reason);
                None
            }
        }
    }

    fn log_skip(&mut self, item: &Value, reason: &str) {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        item.to_string().hash(&mut h);
        let key = h.finish();
        let source = self.source.as_str();
        if self.logged.len() < MAX_LOGGED && self.logged.insert(key) {
            tracing::warn!("{source} row skipped ({reason}): {}", preview(item));
        } else {
            tracing::debug!("{source} row skipped again ({reason})");
        }
    }

    /// Writes the checked rows of one page in one transaction (a call id seen twice keeps
    /// its last row); rows stored unchanged are left alone. Counts inserted / updated.
    ///
    /// Errors: storage failed; the page's rows are counted `failed`, nothing of it is kept.
    pub async fn write(&mut self, records: Vec<CallRecord>) -> Result<(), DbError> {
        self.write_page(records).await?;
        self.pages = self.pages.saturating_add(1);
        let (fetched, skipped) = (self.report.fetched, self.report.skipped);
        super::observe::page(
            self.source.as_str(),
            self.pages,
            fetched.saturating_sub(self.last_page.0),
            skipped.saturating_sub(self.last_page.1),
        );
        self.last_page = (fetched, skipped);
        Ok(())
    }

    async fn write_page(&mut self, records: Vec<CallRecord>) -> Result<(), DbError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut rows: Vec<CallRecord> = Vec::with_capacity(records.len());
        let mut index: HashMap<String, usize> = HashMap::new();
        for r in records {
            match index.get(&r.call_id) {
                Some(&i) => {
                    if let Some(slot) = rows.get_mut(i) {
                        *slot = r;
                    }
                }
                None => {
                    index.insert(r.call_id.clone(), rows.len());
                    rows.push(r);
                }
            }
        }
        let ids: Vec<&str> = rows.iter().map(|r| r.call_id.as_str()).collect();
        let stored = match store::stored_raw(&self.db, self.source, &ids).await {
            Ok(s) => s,
            Err(e) => {
                self.report.failed = self.report.failed.saturating_add(rows.len() as u64);
                return Err(e);
            }
        };
        let (mut inserted, mut updated) = (0u64, 0u64);
        let mut changed = Vec::with_capacity(rows.len());
        for r in rows {
            match stored.get(&r.call_id) {
                None => {
                    inserted += 1;
                    changed.push(r);
                }
                Some(raw) if Some(raw) == r.raw.as_ref() => {}
                Some(_) => {
                    updated += 1;
                    changed.push(r);
                }
            }
        }
        if let Err(e) = crate::calls::store::upsert_many(&self.db, &changed).await {
            self.report.failed = self.report.failed.saturating_add(changed.len() as u64);
            return Err(e);
        }
        self.report.inserted = self.report.inserted.saturating_add(inserted);
        self.report.updated = self.report.updated.saturating_add(updated);
        Ok(())
    }

    /// Moves the watermark to `t` when the run is [`Scope::Full`] and `t` is later than it;
    /// returns whether it moved. Call only once every row up to `t` is committed.
    pub async fn advance(&mut self, t: DateTime<Utc>) -> Result<bool, DbError> {
        if self.scope != Scope::Full || self.mark.is_some_and(|m| t <= m) {
            return Ok(false);
        }
        set_watermark(&self.db, self.watermark, t).await?;
        self.mark = Some(t);
        Ok(true)
    }

    /// The final counts, with the run's wall time.
    pub fn finish(mut self) -> SyncReport {
        self.report.ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.report
    }
}

/// Proptest strategies for the mappers' tests: arbitrary JSON, and objects whose keys are a
/// mapper's field names with hostile values.
#[cfg(test)]
pub(crate) mod arb {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    /// A hostile leaf: huge, negative, fractional and extreme numbers; numeric, date-like,
    /// NUL-holding, empty and long strings; booleans and null.
    pub fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            prop_oneof![
                Just(1e20),
                Just(-1.0),
                Just(1.7e308),
                Just(-1e20),
                Just(1.5e12)
            ]
            .prop_map(|f| json!(f)),
            prop_oneof![Just(i64::MAX), Just(i64::MIN), Just(-1i64), Just(0i64)]
                .prop_map(|n| json!(n)),
            "\\PC{0,12}".prop_map(Value::String),
            "[0-9 :T+Z.-]{0,25}".prop_map(Value::String),
            prop_oneof![
                Just("1e20"),
                Just("-1"),
                Just("9999-12-31 23:59:59"),
                Just("0000-00-00 00:00:00"),
                Just("2025-10-25T12:00:00+14:00"),
                Just("a\u{0}b"),
                Just("262143-12-31 23:59:59"),
                Just("NaN"),
                Just("inf"),
            ]
            .prop_map(|s| Value::String(s.to_string())),
            (1usize..70_000).prop_map(|n| Value::String("x".repeat(n))),
        ]
    }

    /// Any JSON value (nested up to a few levels).
    pub fn json_value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("\\PC{0,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// An object with some of `keys` set to hostile values (or nested JSON).
    pub fn item(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
        let value = prop_oneof![4 => leaf(), 1 => json_value()];
        prop::collection::vec((prop::sample::select(keys), value), 0..12)
            .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::Direction;
    use serde_json::json;

    fn rec() -> CallRecord {
        let mut r = CallRecord::new(
            Source::Kerio,
            "c1",
            Direction::Inbound,
            Utc::now() - chrono::TimeDelta::hours(1),
        );
        r.duration = 60;
        r.billsec = 30;
        r
    }

    #[test]
    fn sync_check_record_ranges() {
        let now = Utc::now();
        assert!(check_record(&rec(), now).is_ok());
        let mut r = rec();
        r.duration = -1;
        assert!(check_record(&r, now).is_err());
        let mut r = rec();
        r.duration = i64::MAX;
        assert!(check_record(&r, now).is_err());
        let mut r = rec();
        r.billsec = 61;
        assert!(check_record(&r, now).is_err());
        let mut r = rec();
        r.from_number = Some("1\u{0}2".into());
        assert!(check_record(&r, now).is_err());
        let mut r = rec();
        r.dial_status = Some("x".repeat(1 << 20));
        assert!(check_record(&r, now).is_err());
        let mut r = rec();
        r.start_time = DateTime::<Utc>::MAX_UTC;
        assert!(check_record(&r, now).is_err());
        let mut r = rec();
        r.end_time = Some(DateTime::<Utc>::MIN_UTC);
        assert!(check_record(&r, now).is_err());
        assert!(check_item(&json!({"a": "x\u{0}"})).is_err());
        assert!(check_item(&json!({"a": "x".repeat(1 << 20)})).is_err());
        assert!(check_item(&json!({"a": 1})).is_ok());
    }

    #[test]
    fn sync_scope_rule() {
        assert_eq!(Scope::of(false, false, false), Scope::Full);
        assert_eq!(Scope::of(true, false, false), Scope::Range);
        assert_eq!(Scope::of(false, true, false), Scope::Range);
        assert_eq!(Scope::of(false, false, true), Scope::Range);
    }
}
