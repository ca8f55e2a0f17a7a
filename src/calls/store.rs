//! SQL for call records: idempotent upsert on (`source`, `node`, `external_id`), the gap-filling
//! write of records rebuilt after the fact (CEL backfill: never over a call ARI saw whole),
//! lookups and the filtered, paged listing behind `GET /calls`. One SQL text per query for
//! both backends.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::model::{CallRecord, CallState, CallStatus, Direction, Source};
use super::stats::{Group, GroupBy, Stats, offset_segments};
use crate::db::{Db, DbError, format_time, get_bool, parse_time};

const COLUMNS: &str = "id, source, node, external_id, direction, from_number, to_number, extension, \
    start_time, answer_time, end_time, duration, billsec, state, status, hangup_cause, \
    hangup_cause_text, dial_status, recording_path, voicemail, reconstructed, raw, created_at, updated_at, \
    origin, transferred_to";

/// The columns an upsert replaces when the call is already stored (all but `id`, `source`,
/// `external_id` and `created_at`; a recording path or raw item is never erased): one list
/// for the live [`upsert_many`] and the backfill's [`fill_gaps`].
macro_rules! update_set {
    () => {
        "direction = excluded.direction, from_number = excluded.from_number, \
    to_number = excluded.to_number, extension = excluded.extension, start_time = excluded.start_time, \
    answer_time = excluded.answer_time, end_time = excluded.end_time, duration = excluded.duration, \
    billsec = excluded.billsec, state = excluded.state, status = excluded.status, \
    hangup_cause = excluded.hangup_cause, hangup_cause_text = excluded.hangup_cause_text, \
    dial_status = excluded.dial_status, \
    recording_path = COALESCE(excluded.recording_path, calls.recording_path), \
    voicemail = excluded.voicemail, reconstructed = excluded.reconstructed, \
    raw = COALESCE(excluded.raw, calls.raw), updated_at = excluded.updated_at, \
    origin = excluded.origin, transferred_to = excluded.transferred_to"
    };
}

const UPSERT: &str = concat!(
    "INSERT INTO calls (id, source, node, external_id, direction, from_number, to_number, extension, \
    start_time, answer_time, end_time, duration, billsec, state, status, hangup_cause, \
    hangup_cause_text, dial_status, recording_path, voicemail, reconstructed, raw, created_at, updated_at, \
    origin, transferred_to) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26) \
    ON CONFLICT (source, node, external_id) DO UPDATE SET ",
    update_set!(),
    " WHERE (COALESCE(calls.origin, '') <> 'cel' OR NOT excluded.reconstructed) \
    AND (calls.end_time IS NULL OR excluded.end_time IS NOT NULL)"
);

/// Filters and paging of `GET /calls` (all optional; times compare with `start_time`).
#[derive(Clone, Debug, Default)]
pub struct CallFilter {
    /// Calls that started at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Calls that started before this time.
    pub to: Option<DateTime<Utc>>,
    /// Only this direction.
    pub direction: Option<Direction>,
    /// Only this outcome.
    pub status: Option<CallStatus>,
    /// Only this agent extension.
    pub extension: Option<String>,
    /// Calls whose from or to number equals this.
    pub number: Option<String>,
    /// Only this source.
    pub source: Option<Source>,
    /// Only calls of this Asterisk node.
    pub node: Option<String>,
    /// Page size (`None`: all rows).
    pub limit: Option<i64>,
    /// Rows to skip.
    pub offset: i64,
}

/// Writes the records in one transaction: inserted when new, updated (all fields but `id`
/// and `created_at`) when (`source`, `call_id`) is already stored. Idempotent.
///
/// Two rules, in the SQL so they hold whatever the order of the writers:
/// - a record marked `reconstructed` never overwrites a row whose `origin` is `cel` (a call
///   that Asterisk's CEL saw whole is more exact than one the tracker finished from what it
///   knew after a gap);
/// - a finished row is never overwritten by an unfinished record: a replica that lost its
///   lease and writes its last snapshots late (after its database link came back) cannot
///   reopen a call the replica that took over has finished.
pub async fn upsert_many(db: &Db, records: &[CallRecord]) -> Result<(), DbError> {
    if records.is_empty() {
        return Ok(());
    }
    let mut tx = db.pool().begin().await?;
    for r in records {
        bind_record(sqlx::query(UPSERT), r)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Inserts or updates one record and tells which: `true` when it was new.
pub async fn upsert_one(db: &Db, record: &CallRecord) -> Result<bool, DbError> {
    let mut tx = db.pool().begin().await?;
    let existed =
        sqlx::query("SELECT 1 FROM calls WHERE source = $1 AND node = $2 AND external_id = $3")
            .bind(record.source.as_str())
            .bind(node_key(record))
            .bind(record.call_id.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
    bind_record(sqlx::query(UPSERT), record)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(!existed)
}

/// What [`fill_gaps`] did with the records it was given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GapFill {
    /// Records written where no row existed.
    pub inserted: u64,
    /// Rows replaced because they were unfinished (`end_time` NULL) or `reconstructed`.
    pub updated: u64,
    /// Records left out because the stored row was seen whole (finished, not reconstructed).
    pub skipped: u64,
}

/// Columns set from the new record when [`fill_gaps`] replaces a row (all but `id` and
/// `created_at`; `recording_path` and `raw` are kept when the new record has none), as in
/// the live upsert.
const FILL_SET: &str = update_set!();

/// Records per statement in [`fill_gaps`] (25 parameters each: 12,500 per statement, under
/// SQLite's 32,766 and PostgreSQL's 65,535).
const FILL_BATCH: usize = 500;

/// Writes records rebuilt after the fact (the CEL backfill) without ever overwriting a call
/// that ARI saw whole. A record is written when no row has its (`source`, `call_id`), or
/// when the stored row is unfinished (`end_time` NULL) or `reconstructed`; otherwise it is
/// skipped. The rule is in the SQL (`ON CONFLICT ... DO UPDATE ... WHERE`), so a row the
/// live writer finishes meanwhile is not overwritten either. One transaction per 500
/// records; records must have distinct (`source`, `call_id`).
///
/// Returns how many were inserted, updated and skipped (inserted and updated are told
/// apart by a look-up in the same transaction just before the write).
///
/// Errors: [`DbError`] when a statement fails; the batches committed before stay written.
pub async fn fill_gaps(db: &Db, records: &[CallRecord]) -> Result<GapFill, DbError> {
    let mut out = GapFill::default();
    for batch in records.chunks(FILL_BATCH) {
        let mut tx = db.pool().begin().await?;
        // Rows that exist already, per source (one source per batch in practice), and
        // whether each may still be replaced (unfinished or reconstructed).
        let mut existing: HashMap<(String, String, String), bool> = HashMap::new();
        let mut scopes: Vec<(Source, &str)> = Vec::new();
        for r in batch {
            if !scopes.contains(&(r.source, node_key(r))) {
                scopes.push((r.source, node_key(r)));
            }
        }
        for (source, node) in scopes {
            let ids: Vec<&str> = batch
                .iter()
                .filter(|r| r.source == source && node_key(r) == node)
                .map(|r| r.call_id.as_str())
                .collect();
            let placeholders: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 3)).collect();
            let sql = format!(
                "SELECT external_id, CASE WHEN end_time IS NULL OR reconstructed THEN 1 ELSE 0 END AS open \
                 FROM calls WHERE source = $1 AND node = $2 AND external_id IN ({})",
                placeholders.join(", ")
            );
            // Not a prepared statement: PostgreSQL then plans with the values and uses the
            // (source, node, external_id) index; a generic plan scanned the table (500x slower).
            let mut q = sqlx::query(&sql)
                .persistent(false)
                .bind(source.as_str())
                .bind(node);
            for id in &ids {
                q = q.bind(*id);
            }
            for row in q.fetch_all(&mut *tx).await? {
                let open = row.try_get::<i64, _>("open")? != 0;
                existing.insert(
                    (
                        source.as_str().to_string(),
                        node.to_string(),
                        row.try_get("external_id")?,
                    ),
                    open,
                );
            }
        }
        // Rows seen whole are skipped without a write; the others go through the guarded
        // upsert (which still refuses a row the live writer finished in the meantime).
        let key = |r: &CallRecord| {
            (
                r.source.as_str().to_string(),
                node_key(r).to_string(),
                r.call_id.clone(),
            )
        };
        let todo: Vec<&CallRecord> = batch
            .iter()
            .filter(|r| existing.get(&key(r)).copied().unwrap_or(true))
            .collect();
        let mut written: HashSet<(String, String, String)> = HashSet::new();
        if !todo.is_empty() {
            let mut values = Vec::with_capacity(todo.len());
            for i in 0..todo.len() {
                let base = i * 26;
                let ph: Vec<String> = (1..=26).map(|k| format!("${}", base + k)).collect();
                values.push(format!("({})", ph.join(", ")));
            }
            let sql = format!(
                "INSERT INTO calls ({COLUMNS}) VALUES {} ON CONFLICT (source, node, external_id) DO UPDATE SET {FILL_SET} \
                 WHERE calls.end_time IS NULL OR calls.reconstructed RETURNING source, node, external_id",
                values.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for r in &todo {
                q = bind_record(q, r);
            }
            for row in q.fetch_all(&mut *tx).await? {
                written.insert((
                    row.try_get("source")?,
                    row.try_get("node")?,
                    row.try_get("external_id")?,
                ));
            }
        }
        tx.commit().await?;
        for r in batch {
            let k = key(r);
            match (written.contains(&k), existing.contains_key(&k)) {
                (true, false) => out.inserted += 1,
                (true, true) => out.updated += 1,
                (false, _) => out.skipped += 1,
            }
        }
    }
    Ok(out)
}

/// The start time of the newest call of `source` (UTC), if any: where a backfill with no
/// watermark yet starts reading.
pub async fn newest_start(db: &Db, source: Source) -> Result<Option<DateTime<Utc>>, DbError> {
    let row = sqlx::query("SELECT MAX(start_time) AS t FROM calls WHERE source = $1")
        .bind(source.as_str())
        .fetch_one(db.pool())
        .await?;
    row.try_get::<Option<String>, _>("t")?
        .map(|s| parse_time("start_time", &s))
        .transpose()
}

/// The `node` column of a record: its node, or `''` for hosted PBXs (part of the unique key,
/// so never NULL).
fn node_key(r: &CallRecord) -> &str {
    r.node.as_deref().unwrap_or("")
}

fn bind_record<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    r: &'q CallRecord,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    q.bind(r.id.to_string())
        .bind(r.source.as_str())
        .bind(node_key(r))
        .bind(r.call_id.as_str())
        .bind(r.direction.as_str())
        .bind(r.from_number.as_deref())
        .bind(r.to_number.as_deref())
        .bind(r.extension.as_deref())
        .bind(format_time(&r.start_time))
        .bind(r.answer_time.as_ref().map(format_time))
        .bind(r.end_time.as_ref().map(format_time))
        .bind(r.duration)
        .bind(r.billsec)
        .bind(r.state.as_str())
        .bind(r.status.map(CallStatus::as_str))
        .bind(r.hangup_cause)
        .bind(r.hangup_cause_text.as_deref())
        .bind(r.dial_status.as_deref())
        .bind(r.recording_path.as_deref())
        .bind(r.voicemail)
        .bind(r.reconstructed)
        .bind(r.raw.as_ref().map(|v| v.to_string()))
        .bind(format_time(&r.created_at))
        .bind(format_time(&r.updated_at))
        .bind(r.origin.as_deref())
        .bind(r.transferred_to.as_deref())
}

/// Rows deleted per statement by [`purge_before`] (short transactions, the writer is not
/// held up).
const PURGE_BATCH: i64 = 5_000;

/// Deletes the finished records (state neither `ringing` nor `connected`) that started before
/// `cutoff` (UTC), in batches of [`PURGE_BATCH`]; returns how many were deleted. Calls still
/// live are never deleted, whatever their age.
pub async fn purge_before(db: &Db, cutoff: DateTime<Utc>) -> Result<u64, DbError> {
    let cutoff = format_time(&cutoff);
    let mut total = 0u64;
    loop {
        let done = sqlx::query(
            "DELETE FROM calls WHERE id IN (SELECT id FROM calls WHERE start_time < $1 \
             AND state NOT IN ('ringing', 'connected') LIMIT $2)",
        )
        .bind(cutoff.as_str())
        .bind(PURGE_BATCH)
        .execute(db.pool())
        .await?
        .rows_affected();
        total = total.saturating_add(done);
        if done < PURGE_BATCH as u64 {
            return Ok(total);
        }
    }
}

/// One record by its UUID.
pub async fn get(db: &Db, id: &str) -> Result<Option<CallRecord>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM calls WHERE id = $1");
    let row = sqlx::query(&sql).bind(id).fetch_optional(db.pool()).await?;
    row.as_ref().map(decode).transpose()
}

/// One record by source, node (`None` for hosted PBXs) and external id.
pub async fn get_by_call_id(
    db: &Db,
    source: Source,
    node: Option<&str>,
    call_id: &str,
) -> Result<Option<CallRecord>, DbError> {
    let sql =
        format!("SELECT {COLUMNS} FROM calls WHERE source = $1 AND node = $2 AND external_id = $3");
    let row = sqlx::query(&sql)
        .bind(source.as_str())
        .bind(node.unwrap_or(""))
        .bind(call_id)
        .fetch_optional(db.pool())
        .await?;
    row.as_ref().map(decode).transpose()
}

/// Records of `source` (and Asterisk node `node`; `None` for hosted PBXs) still live (state
/// ringing or connected): what a restarted daemon, or the replica taking a node over, must
/// pick up again.
pub async fn open_calls(
    db: &Db,
    source: Source,
    node: Option<&str>,
) -> Result<Vec<CallRecord>, DbError> {
    open_where(db, source, Some(node.unwrap_or(""))).await
}

/// Records of `source` still live, on every node: what a replica reloads as the calls in
/// progress after it may have missed relayed events.
pub async fn open_calls_all_nodes(db: &Db, source: Source) -> Result<Vec<CallRecord>, DbError> {
    open_where(db, source, None).await
}

/// The live records of `source`, of one `node` column value or (None) of all.
async fn open_where(
    db: &Db,
    source: Source,
    node: Option<&str>,
) -> Result<Vec<CallRecord>, DbError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM calls WHERE source = $1{} AND state IN ('ringing', 'connected') ORDER BY start_time",
        if node.is_some() { " AND node = $2" } else { "" }
    );
    let mut q = sqlx::query(&sql).bind(source.as_str());
    if let Some(node) = node {
        q = q.bind(node);
    }
    let rows = q.fetch_all(db.pool()).await?;
    rows.iter().map(decode).collect()
}

/// The page of records matching `f`, newest first, and the total count of matches.
pub async fn list(db: &Db, f: &CallFilter) -> Result<(Vec<CallRecord>, i64), DbError> {
    let (where_sql, args) = where_clause(f);
    let count_sql = format!("SELECT COUNT(*) AS n FROM calls{where_sql}");
    let mut count = sqlx::query(&count_sql);
    for a in &args {
        count = count.bind(a.as_str());
    }
    let total: i64 = count.fetch_one(db.pool()).await?.try_get("n")?;

    let mut sql =
        format!("SELECT {COLUMNS} FROM calls{where_sql} ORDER BY start_time DESC, id DESC");
    if let Some(limit) = f.limit {
        sql.push_str(&format!(
            " LIMIT {} OFFSET {}",
            limit.max(0),
            f.offset.max(0)
        ));
    } else if f.offset > 0 {
        sql.push_str(&format!(" LIMIT -1 OFFSET {}", f.offset));
    }
    let mut q = sqlx::query(&sql);
    for a in &args {
        q = q.bind(a.as_str());
    }
    let rows = q.fetch_all(db.pool()).await?;
    let items = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
    Ok((items, total))
}

/// Where a keyset page ends: the (startTime, id) of its last record, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The record's start time, in the stored format (see `db::format_time`).
    pub start_time: String,
    /// The record's id.
    pub id: String,
}

impl Cursor {
    /// The cursor just past `r`.
    pub fn after(r: &CallRecord) -> Self {
        Cursor {
            start_time: format_time(&r.start_time),
            id: r.id.to_string(),
        }
    }
}

/// Up to `limit` records matching `f` (its own limit and offset are ignored), newest first
/// by (startTime, id), strictly after `after` (None: from the newest). Keyset paging: no
/// OFFSET and no count, so each page costs the same, and records inserted between pages
/// never make another record skipped or repeated (stored times are fixed-width UTC text,
/// so text order is time order; ids are unique).
pub async fn page_after(
    db: &Db,
    f: &CallFilter,
    after: Option<&Cursor>,
    limit: i64,
) -> Result<Vec<CallRecord>, DbError> {
    let (mut where_sql, mut args) = where_clause(f);
    if let Some(c) = after {
        args.push(c.start_time.clone());
        let t = args.len();
        args.push(c.id.clone());
        let i = args.len();
        let cond = format!("(start_time < ${t} OR (start_time = ${t} AND id < ${i}))");
        where_sql = if where_sql.is_empty() {
            format!(" WHERE {cond}")
        } else {
            format!("{where_sql} AND {cond}")
        };
    }
    let sql = format!(
        "SELECT {COLUMNS} FROM calls{where_sql} ORDER BY start_time DESC, id DESC LIMIT {}",
        limit.max(0)
    );
    let mut q = sqlx::query(&sql);
    for a in &args {
        q = q.bind(a.as_str());
    }
    let rows = q.fetch_all(db.pool()).await?;
    rows.iter().map(decode).collect()
}

/// Call statistics of the finished calls matching `f` (its limit and offset are ignored),
/// grouped `by` local day or hour in `tz`, or by extension: the groups in key order and the
/// total. Counted and summed in SQL, one query per segment of the range where the zone's
/// offset is constant (the range is `f`'s from/to, else the matching calls' first and last
/// start); SQLite shifts times by the segment's offset (`strftime` modifier), PostgreSQL
/// adds it as an interval. Memory: one row per group, never one per call.
pub async fn stats(
    db: &Db,
    f: &CallFilter,
    by: GroupBy,
    tz: chrono_tz::Tz,
) -> Result<(Vec<Group>, Group), DbError> {
    let mut out = Stats::new();
    let (where_sql, args) = where_clause(f);
    let finished = if where_sql.is_empty() {
        " WHERE status IS NOT NULL".to_string()
    } else {
        format!("{where_sql} AND status IS NOT NULL")
    };
    // The range to cut into segments; an extension grouping needs no cut.
    let segments = if by == GroupBy::Extension {
        vec![None]
    } else {
        let sql =
            format!("SELECT MIN(start_time) AS lo, MAX(start_time) AS hi FROM calls{finished}");
        let mut q = sqlx::query(&sql);
        for a in &args {
            q = q.bind(a.as_str());
        }
        let row = q.fetch_one(db.pool()).await?;
        let (lo, hi): (Option<String>, Option<String>) = (row.try_get("lo")?, row.try_get("hi")?);
        let (Some(lo), Some(hi)) = (lo, hi) else {
            return Ok(out.finish());
        };
        let lo = parse_time("start_time", &lo)?;
        let hi = parse_time("start_time", &hi)? + chrono::Duration::milliseconds(1);
        offset_segments(tz, lo, hi).into_iter().map(Some).collect()
    };
    let sqlite = db.backend() == crate::db::Backend::Sqlite;
    for segment in segments {
        let mut args = args.clone();
        let mut conds = finished.clone();
        let key = match (by, segment) {
            (GroupBy::Extension, _) | (_, None) => "COALESCE(extension, '-')".to_string(),
            (by, Some((start, end, offset))) => {
                args.push(format_time(&start));
                conds.push_str(&format!(" AND start_time >= ${}", args.len()));
                args.push(format_time(&end));
                conds.push_str(&format!(" AND start_time < ${}", args.len()));
                args.push(format!("{offset:+} seconds"));
                let shift = args.len();
                match (sqlite, by == GroupBy::Day) {
                    (true, true) => format!("strftime('%Y-%m-%d', start_time, ${shift})"),
                    (true, false) => format!("strftime('%Y-%m-%dT%H', start_time, ${shift})"),
                    (false, day) => format!(
                        "to_char((start_time::timestamptz AT TIME ZONE 'UTC') + CAST(${shift} AS interval), '{}')",
                        if day {
                            "YYYY-MM-DD"
                        } else {
                            "YYYY-MM-DD\"T\"HH24"
                        }
                    ),
                }
            }
        };
        let ring = if sqlite {
            "(julianday(answer_time) - julianday(start_time)) * 86400.0"
        } else {
            "EXTRACT(EPOCH FROM (answer_time::timestamptz - start_time::timestamptz))"
        };
        let sql = format!(
            "SELECT {key} AS k, COUNT(*) AS total, \
             CAST(SUM(CASE WHEN status = 'answered' THEN 1 ELSE 0 END) AS BIGINT) AS answered, \
             CAST(SUM(CASE WHEN status = 'missed' THEN 1 ELSE 0 END) AS BIGINT) AS missed, \
             CAST(SUM(CASE WHEN status = 'busy' THEN 1 ELSE 0 END) AS BIGINT) AS busy, \
             CAST(SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS BIGINT) AS failed, \
             CAST(SUM(CASE WHEN status = 'answered' AND answer_time IS NOT NULL THEN {ring} ELSE 0 END) AS DOUBLE PRECISION) AS ring_sum, \
             CAST(SUM(CASE WHEN status = 'answered' THEN billsec ELSE 0 END) AS DOUBLE PRECISION) AS talk_sum \
             FROM calls{conds} GROUP BY 1"
        );
        let mut q = sqlx::query(&sql);
        for a in &args {
            q = q.bind(a.as_str());
        }
        for row in q.fetch_all(db.pool()).await? {
            let count = |c: &'static str| -> Result<u64, DbError> {
                Ok(u64::try_from(row.try_get::<i64, _>(c)?).unwrap_or(0))
            };
            out.add_group(Group {
                key: row.try_get("k")?,
                total: count("total")?,
                answered: count("answered")?,
                missed: count("missed")?,
                busy: count("busy")?,
                failed: count("failed")?,
                ring_sum: row.try_get("ring_sum")?,
                talk_sum: row.try_get("talk_sum")?,
                ..Group::default()
            });
        }
    }
    Ok(out.finish())
}

fn where_clause(f: &CallFilter) -> (String, Vec<String>) {
    let mut conds = Vec::new();
    let mut args: Vec<String> = Vec::new();
    let mut push = |cond: &str, arg: String, args: &mut Vec<String>| {
        args.push(arg);
        conds.push(cond.replace('?', &format!("${}", args.len())));
    };
    if let Some(t) = &f.from {
        push("start_time >= ?", format_time(t), &mut args);
    }
    if let Some(t) = &f.to {
        push("start_time < ?", format_time(t), &mut args);
    }
    if let Some(d) = f.direction {
        push("direction = ?", d.as_str().into(), &mut args);
    }
    if let Some(s) = f.status {
        push("status = ?", s.as_str().into(), &mut args);
    }
    if let Some(e) = &f.extension {
        push("extension = ?", e.clone(), &mut args);
    }
    if let Some(s) = f.source {
        push("source = ?", s.as_str().into(), &mut args);
    }
    if let Some(n) = &f.node {
        push("node = ?", n.clone(), &mut args);
    }
    if let Some(n) = &f.number {
        args.push(n.clone());
        let i = args.len();
        conds.push(format!("(from_number = ${i} OR to_number = ${i})"));
    }
    if conds.is_empty() {
        (String::new(), args)
    } else {
        (format!(" WHERE {}", conds.join(" AND ")), args)
    }
}

fn decode(row: &AnyRow) -> Result<CallRecord, DbError> {
    fn text(row: &AnyRow, c: &'static str) -> Result<String, DbError> {
        Ok(row.try_get::<String, _>(c)?)
    }
    fn opt(row: &AnyRow, c: &'static str) -> Result<Option<String>, DbError> {
        Ok(row.try_get::<Option<String>, _>(c)?)
    }
    fn bad(column: &'static str, v: &str) -> DbError {
        DbError::Decode {
            column,
            reason: format!("unknown value {v:?}"),
        }
    }
    let id = text(row, "id")?;
    let source = text(row, "source")?;
    let direction = text(row, "direction")?;
    let state = text(row, "state")?;
    let status = opt(row, "status")?;
    Ok(CallRecord {
        id: id.parse().map_err(|_| bad("id", &id))?,
        source: Source::parse(&source).ok_or_else(|| bad("source", &source))?,
        node: Some(text(row, "node")?).filter(|n| !n.is_empty()),
        call_id: text(row, "external_id")?,
        direction: Direction::parse(&direction).ok_or_else(|| bad("direction", &direction))?,
        from_number: opt(row, "from_number")?,
        to_number: opt(row, "to_number")?,
        extension: opt(row, "extension")?,
        start_time: parse_time("start_time", &text(row, "start_time")?)?,
        answer_time: opt(row, "answer_time")?
            .map(|s| parse_time("answer_time", &s))
            .transpose()?,
        end_time: opt(row, "end_time")?
            .map(|s| parse_time("end_time", &s))
            .transpose()?,
        duration: row.try_get::<i64, _>("duration")?,
        billsec: row.try_get::<i64, _>("billsec")?,
        state: CallState::parse(&state).ok_or_else(|| bad("state", &state))?,
        status: match status {
            Some(s) => Some(CallStatus::parse(&s).ok_or_else(|| bad("status", &s))?),
            None => None,
        },
        hangup_cause: row.try_get::<Option<i64>, _>("hangup_cause")?,
        hangup_cause_text: opt(row, "hangup_cause_text")?,
        dial_status: opt(row, "dial_status")?,
        recording_path: opt(row, "recording_path")?,
        voicemail: get_bool(row, "voicemail")?,
        reconstructed: get_bool(row, "reconstructed")?,
        raw: opt(row, "raw")?.and_then(|s| serde_json::from_str(&s).ok()),
        created_at: parse_time("created_at", &text(row, "created_at")?)?,
        updated_at: parse_time("updated_at", &text(row, "updated_at")?)?,
        origin: opt(row, "origin")?,
        transferred_to: opt(row, "transferred_to")?,
    })
}

/// A call record the database refused, as kept in `call_write_errors`.
#[derive(Clone, Debug, PartialEq)]
pub struct WriteErrorRow {
    /// Row id (ascending in insertion order).
    pub id: i64,
    /// The record's UUID.
    pub call_record_id: String,
    /// The record's source (`asterisk`, `kerio`, `kavkom`).
    pub source: String,
    /// The record's external id (any NUL written as `\u0000`).
    pub external_id: String,
    /// The whole record as JSON (the API's camelCase shape, control characters escaped).
    pub record: String,
    /// The database's error.
    pub error: String,
    /// When the writer gave up on it.
    pub failed_at: DateTime<Utc>,
}

/// Text a database accepts whatever the record held: NUL (refused in PostgreSQL text)
/// written as `\u0000`.
fn storable(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        s.replace('\0', "\\u0000").into()
    } else {
        s.into()
    }
}

/// Keeps a record the database refused in `call_write_errors`, whole (as JSON, which
/// escapes every control character), with the error and the time.
///
/// Errors: [`DbError::Sqlx`] when the database cannot be reached.
pub async fn insert_write_error(db: &Db, record: &CallRecord, error: &str) -> Result<(), DbError> {
    let json = serde_json::to_string(record).map_err(|e| DbError::Decode {
        column: "record",
        reason: format!("cannot serialize the call record: {e}"),
    })?;
    sqlx::query(
        "INSERT INTO call_write_errors (call_record_id, source, external_id, record, error, failed_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(record.id.to_string())
    .bind(record.source.as_str())
    .bind(storable(&record.call_id).into_owned())
    .bind(json)
    .bind(storable(error).into_owned())
    .bind(format_time(&Utc::now()))
    .execute(db.pool())
    .await?;
    Ok(())
}

/// How many records `call_write_errors` holds.
pub async fn count_write_errors(db: &Db) -> Result<i64, DbError> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM call_write_errors")
        .fetch_one(db.pool())
        .await?;
    Ok(row.try_get::<i64, _>("n")?)
}

/// The newest `limit` rows of `call_write_errors`, oldest first.
pub async fn list_write_errors(db: &Db, limit: i64) -> Result<Vec<WriteErrorRow>, DbError> {
    let rows = sqlx::query(
        "SELECT id, call_record_id, source, external_id, record, error, failed_at \
         FROM call_write_errors ORDER BY id DESC LIMIT $1",
    )
    .bind(limit.max(0))
    .fetch_all(db.pool())
    .await?;
    let mut out = rows
        .iter()
        .map(|row| {
            Ok(WriteErrorRow {
                id: row.try_get::<i64, _>("id")?,
                call_record_id: row.try_get::<String, _>("call_record_id")?,
                source: row.try_get::<String, _>("source")?,
                external_id: row.try_get::<String, _>("external_id")?,
                record: row.try_get::<String, _>("record")?,
                error: row.try_get::<String, _>("error")?,
                failed_at: parse_time("failed_at", &row.try_get::<String, _>("failed_at")?)?,
            })
        })
        .collect::<Result<Vec<_>, DbError>>()?;
    out.reverse();
    Ok(out)
}
