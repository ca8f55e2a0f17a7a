//! Reading Asterisk's `cel` table: the SQL of the CEL backfill. Its own sqlx `Any` pool,
//! separate from pbxbridge's database, read-only on SQLite (Asterisk's `master.db` is
//! Asterisk's file).
//!
//! Two layouts, same column names (cel_pgsql's: `eventtype, eventtime, userdeftype,
//! cid_name, cid_num, cid_ani, cid_rdnis, cid_dnid, exten, context, channame, appname,
//! appdata, amaflags, accountcode, peeraccount, uniqueid, linkedid, userfield, peer, extra`;
//! pbxbridge reads `eventtype, eventtime, cid_num, exten, channame, appname, appdata,
//! uniqueid, linkedid, extra`):
//! - PostgreSQL, table written by `cel_pgsql` (`asterisk-conf/cel-pgsql.sql`): `eventtime`
//!   is a `timestamp` (UTC with `usegmtime = yes`), or `timestamptz`, or text in cel_pgsql's
//!   format `YYYY-MM-DD HH:MM:SS.ffffff`; rows are ordered by `id`.
//! - SQLite, table written by `cel_sqlite3_custom` (`AcctId INTEGER PRIMARY KEY` and untyped
//!   columns): `eventtime` is text as `cel.conf`'s `dateformat` makes it: `SECONDS.MICROS`
//!   since the epoch when unset (what we ship), or a date-time (taken as UTC); rows are
//!   ordered by `rowid`.
//!
//! Two queries: the linkedids whose `LINKEDID_END` falls in a window, then every row of
//! those linkedids (so a call that began before the window is read whole) of the events the
//! fold reads ([`FOLDED_EVENTS`]).

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor, Row};

use super::CelError;
use crate::config::redact_url;

/// One CEL row as stored, the fields the fold reads, as text (NULL read as empty). `seq` is
/// the row's insertion order (`id` on PostgreSQL, `rowid` on SQLite; 0 when the table has no `id`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CelRow {
    /// Insertion order, to break ties between rows with the same `eventtime`.
    pub seq: i64,
    /// Event name: `CHAN_START`, `ANSWER`, `HANGUP`, `LINKEDID_END`, ...
    pub eventtype: String,
    /// When it happened, as stored (see the module documentation for the formats).
    pub eventtime: String,
    /// Caller id number of the channel.
    pub cid_num: String,
    /// Dialplan exten of the channel at the event.
    pub exten: String,
    /// Channel name (`PJSIP/1001-00000017`).
    pub channame: String,
    /// Application running (`Stasis`, `Dial`, `AppDial`, `Queue`, ...).
    pub appname: String,
    /// Its arguments (`callcenter,inbound,712345001`).
    pub appdata: String,
    /// The channel's uniqueid.
    pub uniqueid: String,
    /// The linkedid of the channel at the event (it can change: attended transfer).
    pub linkedid: String,
    /// Event-specific JSON (`{"hangupcause":16,"dialstatus":"ANSWER",...}` on HANGUP).
    pub extra: String,
}

/// The CEL columns read, in [`CelRow`] order (after `seq`). The table has more
/// (`cid_name`, `cid_ani`, `cid_dnid`, `context`, `peer`, ...): the fold does not use them.
const COLUMNS: [&str; 10] = [
    "eventtype",
    "eventtime",
    "cid_num",
    "exten",
    "channame",
    "appname",
    "appdata",
    "uniqueid",
    "linkedid",
    "extra",
];

/// The events the fold reads; the others (`APP_END`, `BRIDGE_ENTER`, `BRIDGE_EXIT`,
/// `STREAM_*`, ...) are left in the database.
pub const FOLDED_EVENTS: [&str; 8] = [
    "CHAN_START",
    "CHAN_END",
    "ANSWER",
    "HANGUP",
    "APP_START",
    "LINKEDID_END",
    "BLINDTRANSFER",
    "ATTENDEDTRANSFER",
];

/// How `eventtime` is stored, which decides how it is read and compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimeColumn {
    /// PostgreSQL `timestamp` (without time zone), holding UTC.
    PgNaive,
    /// PostgreSQL `timestamptz`.
    PgZoned,
    /// PostgreSQL text in cel_pgsql's `YYYY-MM-DD HH:MM:SS.ffffff`.
    PgText,
    /// SQLite text: epoch `SECONDS.MICROS` or a date-time.
    SqliteText,
}

/// A connection to the CEL database and what it learnt of the `cel` table. Cloning shares
/// the pool.
#[derive(Clone)]
pub struct CelStore {
    pool: AnyPool,
    time: TimeColumn,
    select: String,
    redacted: String,
}

impl std::fmt::Debug for CelStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CelStore")
            .field("url", &self.redacted)
            .field("time", &self.time)
            .finish_non_exhaustive()
    }
}

/// Most linkedids callers pass to one [`CelStore::rows_of`] query.
pub const MAX_LINKEDIDS_PER_QUERY: usize = 1000;

impl CelStore {
    /// Opens the CEL database at `url` (`postgres://...` or `sqlite://FILE`, opened
    /// read-only) and checks its `cel` table.
    ///
    /// Errors: [`CelError::UnsupportedUrl`], [`CelError::Connect`] when it cannot be
    /// reached, [`CelError::Schema`] when there is no `cel` table, a needed column is
    /// missing or `eventtime` has a type that cannot be read.
    pub async fn connect(url: &str) -> Result<CelStore, CelError> {
        sqlx::any::install_default_drivers();
        let redacted = redact_url(url);
        let scheme = url
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let connect_err = |e: sqlx::Error| CelError::Connect {
            url: redacted.clone(),
            reason: scrub(&e.to_string(), url),
        };
        let pool = match scheme.as_str() {
            "sqlite" => {
                let mut u = url.to_string();
                if !u.contains("mode=") {
                    u.push(if u.contains('?') { '&' } else { '?' });
                    u.push_str("mode=ro");
                }
                let options = AnyConnectOptions::from_str(&u).map_err(connect_err)?;
                AnyPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(Duration::from_secs(10))
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            // Asterisk writes the file while we read it.
                            conn.execute("PRAGMA busy_timeout=5000;").await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await
                    .map_err(connect_err)?
            }
            "postgres" | "postgresql" => {
                let options = AnyConnectOptions::from_str(url).map_err(connect_err)?;
                AnyPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await
                    .map_err(connect_err)?
            }
            other => return Err(CelError::UnsupportedUrl(other.to_string())),
        };
        let sqlite = scheme == "sqlite";
        let schema = |reason: String| CelError::Schema {
            url: redacted.clone(),
            reason,
        };
        // Columns of the cel table, with their types (PostgreSQL).
        let columns_sql = if sqlite {
            "SELECT name, COALESCE(type, '') AS type FROM pragma_table_info('cel')"
        } else {
            "SELECT CAST(column_name AS TEXT) AS name, CAST(data_type AS TEXT) AS type \
             FROM information_schema.columns \
             WHERE table_name = 'cel' AND table_schema = current_schema()"
        };
        let cols: Vec<(String, String)> = sqlx::query(columns_sql)
            .fetch_all(&pool)
            .await
            .map_err(connect_err)?
            .iter()
            .map(|r| Ok((r.try_get("name")?, r.try_get("type")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(connect_err)?;
        if cols.is_empty() {
            return Err(schema(
                "no table `cel` (create it with asterisk-conf/cel-pgsql.sql, or let \
                 cel_sqlite3_custom create it with asterisk-conf/cel_sqlite3_custom.conf)"
                    .into(),
            ));
        }
        let has = |name: &str| cols.iter().any(|(c, _)| c.eq_ignore_ascii_case(name));
        let time = if sqlite {
            TimeColumn::SqliteText
        } else {
            let ty = cols
                .iter()
                .find(|(c, _)| c.eq_ignore_ascii_case("eventtime"))
                .map(|(_, t)| t.to_ascii_lowercase())
                .unwrap_or_default();
            match ty.as_str() {
                "timestamp without time zone" => TimeColumn::PgNaive,
                "timestamp with time zone" => TimeColumn::PgZoned,
                "text" | "character varying" | "character" => TimeColumn::PgText,
                "" => TimeColumn::PgText, // reported as missing below
                other => {
                    return Err(schema(format!(
                        "column cel.eventtime has type {other}; pbxbridge reads timestamp, \
                         timestamptz or text"
                    )));
                }
            }
        };
        let missing: Vec<&str> = COLUMNS.iter().filter(|c| !has(c)).copied().collect();
        if !missing.is_empty() {
            return Err(schema(format!(
                "table cel lacks column(s) {}",
                missing.join(", ")
            )));
        }
        let mut select = vec![if sqlite {
            "rowid AS seq".to_string()
        } else if has("id") {
            "CAST(id AS BIGINT) AS seq".to_string()
        } else {
            "CAST(0 AS BIGINT) AS seq".to_string()
        }];
        for c in COLUMNS {
            select.push(match (c, time) {
                ("eventtime", TimeColumn::PgNaive) => {
                    "to_char(eventtime, 'YYYY-MM-DD HH24:MI:SS.US') AS eventtime".to_string()
                }
                ("eventtime", TimeColumn::PgZoned) => {
                    "to_char(eventtime AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') AS eventtime"
                        .to_string()
                }
                _ => format!("COALESCE(CAST({c} AS TEXT), '') AS {c}"),
            });
        }
        Ok(CelStore {
            pool,
            time,
            select: select.join(", "),
            redacted,
        })
    }

    /// The URL with its password replaced by `***` (for logs).
    pub fn redacted_url(&self) -> &str {
        &self.redacted
    }

    /// The linkedids whose `LINKEDID_END` is in `[from, to]` (UTC), oldest end first: the
    /// calls that finished in the window.
    ///
    /// Errors: [`CelError::Read`].
    pub async fn linkedids_ending(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<String>, CelError> {
        let (cond, order) = self.window_sql();
        let sql = format!(
            "SELECT linkedid FROM cel WHERE eventtype = 'LINKEDID_END' AND {cond} \
             GROUP BY linkedid ORDER BY MIN({order}), linkedid"
        );
        let q = sqlx::query(&sql);
        let q = match self.time {
            TimeColumn::SqliteText => q.bind(epoch_seconds(from)).bind(epoch_seconds(to)),
            TimeColumn::PgZoned => q
                .bind(format!("{}+00", pg_time(from)))
                .bind(format!("{}+00", pg_time(to))),
            TimeColumn::PgNaive | TimeColumn::PgText => q.bind(pg_time(from)).bind(pg_time(to)),
        };
        let rows = q.fetch_all(&self.pool).await.map_err(read_err)?;
        rows.iter()
            .map(|r| {
                r.try_get::<Option<String>, _>("linkedid")
                    .map(Option::unwrap_or_default)
            })
            .filter(|l| !matches!(l, Ok(s) if s.is_empty()))
            .collect::<Result<_, _>>()
            .map_err(read_err)
    }

    /// The rows of the [`FOLDED_EVENTS`] whose linkedid is one of `linkedids` (any order;
    /// `seq` tells the insertion order). Callers pass at most [`MAX_LINKEDIDS_PER_QUERY`]
    /// at a time.
    ///
    /// Errors: [`CelError::Read`] when the query fails or a row cannot be decoded.
    pub async fn rows_of(&self, linkedids: &[String]) -> Result<Vec<CelRow>, CelError> {
        if linkedids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (1..=linkedids.len()).map(|i| format!("${i}")).collect();
        let events: Vec<String> = FOLDED_EVENTS.iter().map(|e| format!("'{e}'")).collect();
        let sql = format!(
            "SELECT {} FROM cel WHERE linkedid IN ({}) AND eventtype IN ({})",
            self.select,
            placeholders.join(", "),
            events.join(", ")
        );
        // Not a prepared statement: planned with the values (see `calls::store::fill_gaps`).
        let mut q = sqlx::query(&sql).persistent(false);
        for l in linkedids {
            q = q.bind(l.as_str());
        }
        let rows = q.fetch_all(&self.pool).await.map_err(read_err)?;
        // By position: the columns of `select`, `seq` first, then COLUMNS in order.
        rows.iter()
            .map(|r| {
                let t = |i: usize| {
                    r.try_get::<Option<String>, _>(i)
                        .map(Option::unwrap_or_default)
                };
                Ok(CelRow {
                    seq: r.try_get::<i64, _>(0)?,
                    eventtype: t(1)?,
                    eventtime: t(2)?,
                    cid_num: t(3)?,
                    exten: t(4)?,
                    channame: t(5)?,
                    appname: t(6)?,
                    appdata: t(7)?,
                    uniqueid: t(8)?,
                    linkedid: t(9)?,
                    extra: t(10)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(read_err)
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The window condition on `eventtime` (parameters `$1`, `$2`) and the expression to
    /// order by time.
    fn window_sql(&self) -> (&'static str, &'static str) {
        match self.time {
            TimeColumn::PgNaive => (
                "eventtime >= CAST($1 AS TIMESTAMP) AND eventtime <= CAST($2 AS TIMESTAMP)",
                "eventtime",
            ),
            TimeColumn::PgZoned => (
                "eventtime >= CAST($1 AS TIMESTAMPTZ) AND eventtime <= CAST($2 AS TIMESTAMPTZ)",
                "eventtime",
            ),
            TimeColumn::PgText => ("eventtime >= $1 AND eventtime <= $2", "eventtime"),
            // Either format, as seconds since the epoch: a date-time (dateformat set; taken
            // as UTC) has a '-', the default `SECONDS.MICROS` has none.
            TimeColumn::SqliteText => (
                "(CASE WHEN instr(eventtime, '-') > 0 \
                   THEN (julianday(eventtime) - 2440587.5) * 86400.0 \
                   ELSE CAST(eventtime AS REAL) END) BETWEEN $1 AND $2",
                "CASE WHEN instr(eventtime, '-') > 0 \
                   THEN (julianday(eventtime) - 2440587.5) * 86400.0 \
                   ELSE CAST(eventtime AS REAL) END",
            ),
        }
    }
}

/// `t` as cel_pgsql writes it: `YYYY-MM-DD HH:MM:SS.ffffff` (UTC).
fn pg_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

/// `t` as seconds since the epoch, with microseconds.
fn epoch_seconds(t: DateTime<Utc>) -> f64 {
    t.timestamp() as f64 + f64::from(t.timestamp_subsec_micros()) / 1e6
}

fn read_err(e: sqlx::Error) -> CelError {
    CelError::Read(e.to_string())
}

/// `msg` with the password of `url` (user-info or `password=` parameter) replaced by `***`.
fn scrub(msg: &str, url: &str) -> String {
    let mut out = msg.to_string();
    for secret in passwords_in(url) {
        if !secret.is_empty() {
            out = out.replace(secret, "***");
        }
    }
    out
}

fn passwords_in(url: &str) -> Vec<&str> {
    let mut v = Vec::new();
    if let (Some(s), Some(at)) = (url.find("://"), url.rfind('@'))
        && at > s
        && let Some(creds) = url.get(s + 3..at)
        && let Some((_, pw)) = creds.split_once(':')
    {
        v.push(pw);
    }
    if let Some((_, query)) = url.split_once('?') {
        for kv in query.split('&') {
            if let Some(pw) = kv.strip_prefix("password=") {
                v.push(pw);
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_scrubbed() {
        let url = "postgres://ast:s3cret@db/asterisk?password=other";
        let msg = "failed for ast:s3cret and other";
        let s = scrub(msg, url);
        assert!(!s.contains("s3cret") && !s.contains("other"), "{s}");
    }

    #[test]
    fn time_formats() {
        let t = DateTime::parse_from_rfc3339("2026-11-21T16:44:49.441613Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(pg_time(t), "2026-11-21 16:44:49.441613");
        assert!((epoch_seconds(t) - 1_795_279_489.441_613).abs() < 1e-5);
    }
}
