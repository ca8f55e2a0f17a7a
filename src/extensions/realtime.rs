//! `PJSIP_MODE=realtime`: the store of Asterisk's realtime PJSIP tables `ps_endpoints`,
//! `ps_auths` and `ps_aors` in the PostgreSQL pbxbridge uses, which every Asterisk node reads
//! through res_config_pgsql and sorcery (`asterisk-conf/sorcery.conf`, `extconfig.conf`).
//!
//! The rows are made from [`render::sections`] (the same objects as the include file, the
//! auth as `auth_type = md5` + `md5_cred`), one column per option, named as Asterisk's alembic
//! scripts name them (`contrib/ast-db-manage/config/versions`). The tables belong to Asterisk:
//! they are created by its alembic scripts or by [`SCHEMA_FILE`], never by pbxbridge's
//! migrations. pbxbridge only touches rows it created, listed in `pjsip_realtime_owned`
//! (migration 0011): a row with the same id that an admin added (a trunk) is left alone and
//! the extension that would overwrite it is refused.
//!
//! One [`apply`] is one transaction (serialised between pbxbridge processes with a
//! transaction-scoped advisory lock): rows that differ are updated, missing ones inserted,
//! owned rows of extensions that are disabled or gone deleted. Every value is a bound
//! parameter cast to the column's own type (`yesno_values` or `ast_bool_values`, `integer`,
//! `varchar`), read from `information_schema`, so both old and new alembic schemas work.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sqlx::Row;

use super::render::{Section, SectionKind};
use crate::db::{Backend, Db, DbError};

/// The alembic-equivalent schema of the realtime tables, shipped with pbxbridge.
pub const SCHEMA_FILE: &str = "asterisk-conf/realtime-pjsip-pgsql.sql";

/// The tables written, in the order of [`SectionKind`].
pub const TABLES: [&str; 3] = ["ps_endpoints", "ps_auths", "ps_aors"];

/// Errors of the realtime store.
#[derive(Debug, thiserror::Error)]
pub enum RealtimeError {
    /// The database is not PostgreSQL.
    #[error("{}", crate::config::REALTIME_NEEDS_POSTGRES)]
    NotPostgres,
    /// Asterisk's tables are not in the database.
    #[error(
        "Asterisk's realtime table(s) {} missing in the database: load {SCHEMA_FILE} into it (psql \"$DATABASE_URL\" -f {SCHEMA_FILE}) or run Asterisk's alembic (contrib/ast-db-manage, `alembic -c config.ini upgrade head`)",
        .0.join(", ")
    )]
    MissingTables(Vec<&'static str>),
    /// A column pbxbridge writes is missing (an old alembic schema).
    #[error(
        "column {table}.{column} is missing: upgrade the realtime schema with Asterisk's alembic (`alembic -c config.ini upgrade head`) or {SCHEMA_FILE}"
    )]
    MissingColumn {
        /// Table.
        table: &'static str,
        /// Column.
        column: String,
    },
    /// A query failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<sqlx::Error> for RealtimeError {
    fn from(e: sqlx::Error) -> Self {
        RealtimeError::Db(DbError::from(e))
    }
}

/// The table of a section kind.
pub fn table(kind: SectionKind) -> &'static str {
    match kind {
        SectionKind::Endpoint => TABLES[0],
        SectionKind::Auth => TABLES[1],
        SectionKind::Aor => TABLES[2],
    }
}

/// Column types and widths of the realtime tables, from `information_schema.columns`.
#[derive(Clone, Debug, Default)]
pub struct Schema {
    /// `(table, column)` → (type name as `pg_type.typname`, e.g. `varchar`, `int4`,
    /// `ast_bool_values`; maximum characters for `varchar`).
    columns: HashMap<(String, String), (String, Option<i64>)>,
}

impl Schema {
    fn column(&self, table: &str, column: &str) -> Option<&(String, Option<i64>)> {
        self.columns.get(&(table.to_string(), column.to_string()))
    }

    /// `$n::"type"` for a column, the cast every value goes through.
    fn cast(&self, table: &str, column: &str, n: usize) -> String {
        match self.column(table, column) {
            Some((udt, _)) => format!("${n}::\"{}\"", udt.replace('"', "\"\"")),
            None => format!("${n}"),
        }
    }

    /// The width of a `varchar` column, None when unbounded or not text.
    pub fn width(&self, table: &str, column: &str) -> Option<i64> {
        self.column(table, column).and_then(|(_, w)| *w)
    }
}

/// Reads the columns of `ps_endpoints`, `ps_auths`, `ps_aors`.
///
/// Errors: [`RealtimeError::NotPostgres`] on SQLite, [`RealtimeError::MissingTables`] naming
/// the tables that do not exist (and [`SCHEMA_FILE`]).
pub async fn schema(db: &Db) -> Result<Schema, RealtimeError> {
    if db.backend() != Backend::Postgres {
        return Err(RealtimeError::NotPostgres);
    }
    let rows = sqlx::query(
        "SELECT table_name::text AS t, column_name::text AS c, udt_name::text AS u, \
         character_maximum_length::bigint AS w FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name IN ('ps_endpoints', 'ps_auths', 'ps_aors')",
    )
    .fetch_all(db.pool())
    .await?;
    let mut schema = Schema::default();
    for r in &rows {
        let t: String = r.try_get("t")?;
        let c: String = r.try_get("c")?;
        let u: String = r.try_get("u")?;
        let w: Option<i64> = r.try_get("w")?;
        schema.columns.insert((t, c), (u, w));
    }
    let missing: Vec<&'static str> = TABLES
        .into_iter()
        .filter(|t| {
            !schema
                .columns
                .contains_key(&(t.to_string(), "id".to_string()))
        })
        .collect();
    if !missing.is_empty() {
        return Err(RealtimeError::MissingTables(missing));
    }
    Ok(schema)
}

/// Rows pbxbridge owns, per table (for `pbxbridge check`).
pub async fn owned_counts(db: &Db) -> Result<BTreeMap<String, i64>, DbError> {
    let rows = sqlx::query(
        "SELECT tbl, COUNT(*) AS n FROM pjsip_realtime_owned GROUP BY tbl ORDER BY tbl",
    )
    .fetch_all(db.pool())
    .await?;
    let mut out = BTreeMap::new();
    for r in &rows {
        out.insert(r.try_get::<String, _>("tbl")?, r.try_get::<i64, _>("n")?);
    }
    Ok(out)
}

/// The objects of one extension to write.
#[derive(Clone, Debug)]
pub struct Wanted {
    /// The extension number (for errors).
    pub extension: String,
    /// Endpoint, auth, aor (from [`super::render::sections`] with
    /// [`super::render::AuthStyle::Md5Cred`]).
    pub sections: [Section; 3],
}

/// An extension that was not written, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The extension number.
    pub extension: String,
    /// Why (for its `provisioning.error`).
    pub reason: String,
}

/// What [`apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Rows inserted, updated or deleted (0: Asterisk has nothing new to load).
    pub changed: usize,
    /// Extensions not written (an admin's row has the id; a value is wider than its column).
    pub refused: Vec<Refused>,
}

/// Makes the owned rows of the three tables exactly `wanted`, in one transaction (see the
/// module doc). Rows pbxbridge does not own are never changed.
///
/// Errors: those of [`schema`]; [`RealtimeError::MissingColumn`] when a column it writes does
/// not exist; [`RealtimeError::Db`].
pub async fn apply(db: &Db, wanted: &[Wanted]) -> Result<Applied, RealtimeError> {
    let schema = schema(db).await?;
    let mut applied = Applied::default();
    // Columns per table, from what is written; all must exist.
    let mut columns: [Vec<&'static str>; 3] = Default::default();
    for w in wanted {
        for s in &w.sections {
            let i = s.kind as usize;
            for (k, _) in &s.options {
                if !columns[i].contains(k) {
                    columns[i].push(k);
                }
            }
        }
    }
    for (i, cols) in columns.iter().enumerate() {
        for c in cols {
            if schema.column(TABLES[i], c).is_none() {
                return Err(RealtimeError::MissingColumn {
                    table: TABLES[i],
                    column: c.to_string(),
                });
            }
        }
    }
    // Values that do not fit their column refuse the extension (caller ID names are shortened).
    let mut fitting: Vec<Wanted> = Vec::with_capacity(wanted.len());
    for w in wanted {
        let mut w = w.clone();
        match fit(&schema, &mut w) {
            Ok(()) => fitting.push(w),
            Err(reason) => applied.refused.push(Refused {
                extension: w.extension.clone(),
                reason,
            }),
        }
    }

    let mut tx = db.pool().begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('pbxbridge pjsip realtime'))")
        .execute(&mut *tx)
        .await?;
    let owned: BTreeSet<(String, String)> = sqlx::query("SELECT tbl, id FROM pjsip_realtime_owned")
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("tbl")?, r.try_get("id")?)))
        .collect::<Result<_, sqlx::Error>>()?;
    // Current rows with the columns written, as text (NULL as None).
    let mut current: [HashMap<String, Vec<Option<String>>>; 3] = Default::default();
    for (i, cols) in columns.iter().enumerate() {
        let select: Vec<String> = std::iter::once("id::text AS id".to_string())
            .chain(
                cols.iter()
                    .enumerate()
                    .map(|(j, c)| format!("\"{c}\"::text AS c{j}")),
            )
            .collect();
        let sql = format!("SELECT {} FROM {}", select.join(", "), TABLES[i]);
        for r in sqlx::query(&sql).fetch_all(&mut *tx).await? {
            let id: String = r.try_get("id")?;
            let mut values = Vec::with_capacity(cols.len());
            for j in 0..cols.len() {
                values.push(r.try_get::<Option<String>, _>(format!("c{j}").as_str())?);
            }
            current[i].insert(id, values);
        }
    }
    // An id held by a row pbxbridge did not create refuses the whole extension.
    let mut write: Vec<&Wanted> = Vec::with_capacity(fitting.len());
    for w in &fitting {
        let foreign = w.sections.iter().find(|s| {
            let t = table(s.kind);
            current[s.kind as usize].contains_key(&s.id)
                && !owned.contains(&(t.to_string(), s.id.clone()))
        });
        match foreign {
            Some(s) => applied.refused.push(Refused {
                extension: w.extension.clone(),
                reason: format!(
                    "{} already has a row {:?} that pbxbridge did not create (an admin's object); pbxbridge leaves it alone: rename or remove it, or use another extension number",
                    table(s.kind),
                    s.id
                ),
            }),
            None => write.push(w),
        }
    }
    let mut keep: BTreeSet<(String, String)> = BTreeSet::new();
    for w in &write {
        for s in &w.sections {
            let i = s.kind as usize;
            let t = table(s.kind);
            keep.insert((t.to_string(), s.id.clone()));
            let cols = &columns[i];
            let values: Vec<Option<String>> = cols
                .iter()
                .map(|c| {
                    s.options
                        .iter()
                        .find(|(k, _)| k == c)
                        .map(|(_, v)| v.clone())
                })
                .collect();
            match current[i].get(&s.id) {
                Some(have) if *have == values => {}
                Some(_) => {
                    let sets: Vec<String> = cols
                        .iter()
                        .enumerate()
                        .map(|(j, c)| format!("\"{c}\" = {}", schema.cast(t, c, j + 2)))
                        .collect();
                    let sql = format!("UPDATE {t} SET {} WHERE id = $1", sets.join(", "));
                    let mut q = sqlx::query(&sql).bind(s.id.clone());
                    for v in &values {
                        q = q.bind(v.clone());
                    }
                    q.execute(&mut *tx).await?;
                    applied.changed += 1;
                }
                None => {
                    let names: Vec<String> = std::iter::once("id".to_string())
                        .chain(cols.iter().map(|c| format!("\"{c}\"")))
                        .collect();
                    let params: Vec<String> = std::iter::once(schema.cast(t, "id", 1))
                        .chain(
                            cols.iter()
                                .enumerate()
                                .map(|(j, c)| schema.cast(t, c, j + 2)),
                        )
                        .collect();
                    let sql = format!(
                        "INSERT INTO {t} ({}) VALUES ({})",
                        names.join(", "),
                        params.join(", ")
                    );
                    let mut q = sqlx::query(&sql).bind(s.id.clone());
                    for v in &values {
                        q = q.bind(v.clone());
                    }
                    q.execute(&mut *tx).await?;
                    applied.changed += 1;
                }
            }
            sqlx::query(
                "INSERT INTO pjsip_realtime_owned (tbl, id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(t)
            .bind(s.id.clone())
            .execute(&mut *tx)
            .await?;
        }
    }
    // Owned rows no extension wants any more (disabled, deleted, renumbered, refused).
    for (t, id) in owned.difference(&keep) {
        let Some(t) = TABLES.into_iter().find(|x| x == t) else {
            tracing::warn!(table = %t, id = %id, "pjsip_realtime_owned names an unknown table; entry dropped");
            sqlx::query("DELETE FROM pjsip_realtime_owned WHERE tbl = $1 AND id = $2")
                .bind(t.clone())
                .bind(id.clone())
                .execute(&mut *tx)
                .await?;
            continue;
        };
        let done = sqlx::query(&format!("DELETE FROM {t} WHERE id = $1"))
            .bind(id.clone())
            .execute(&mut *tx)
            .await?;
        applied.changed += usize::try_from(done.rows_affected()).unwrap_or(usize::MAX);
        sqlx::query("DELETE FROM pjsip_realtime_owned WHERE tbl = $1 AND id = $2")
            .bind(t)
            .bind(id.clone())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(applied)
}

/// Checks every value of `w` against its column width. A caller ID whose name is too long
/// has the name shortened (it is only shown); any other value that does not fit is an error
/// naming the column.
fn fit(schema: &Schema, w: &mut Wanted) -> Result<(), String> {
    for s in &mut w.sections {
        let t = table(s.kind);
        if let Some(max) = schema.width(t, "id")
            && too_long(&s.id, max)
        {
            return Err(format!(
                "{t}.id {:?} is longer than the column ({max} characters)",
                s.id
            ));
        }
        for (k, v) in &mut s.options {
            let Some(max) = schema.width(t, k) else {
                continue;
            };
            if !too_long(v, max) {
                continue;
            }
            if *k == "callerid"
                && let Some(short) = shorten_callerid(v, max)
            {
                tracing::warn!(extension = %w.extension, "caller ID name shortened to fit {t}.callerid ({max} characters)");
                *v = short;
                continue;
            }
            return Err(format!(
                "{k} is longer than Asterisk's realtime column {t}.{k} ({max} characters)"
            ));
        }
    }
    Ok(())
}

fn too_long(v: &str, max: i64) -> bool {
    i64::try_from(v.chars().count()).unwrap_or(i64::MAX) > max
}

/// `"Name" <N>` shortened to at most `max` characters by cutting the name (trailing spaces
/// dropped); `<N>` when no name fits. None when even `<N>` is too long.
fn shorten_callerid(v: &str, max: i64) -> Option<String> {
    let max = usize::try_from(max).ok()?;
    let open = v.rfind(" <")?;
    let number = v.get(open + 1..)?; // "<N>"
    let name = v.get(..open)?.trim_matches('"');
    // Room for the name: the quotes and the space take 3.
    let room = max.saturating_sub(number.chars().count() + 3);
    let cut: String = name.chars().take(room).collect();
    let cut = cut.trim_end();
    if cut.is_empty() {
        (number.chars().count() <= max).then(|| number.to_string())
    } else {
        Some(format!("\"{cut}\" {number}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_id_is_shortened_by_its_name() {
        let long = "\"Abdurakhmonov Abdulloh Abdulazizovich\" <1001>";
        let s = shorten_callerid(long, 40).unwrap();
        assert!(s.chars().count() <= 40, "{s}");
        assert!(
            s.starts_with("\"Abdurakhmonov") && s.ends_with("\" <1001>"),
            "{s}"
        );
        assert_eq!(
            shorten_callerid("\"Ab\" <1234567890>", 12).unwrap(),
            "<1234567890>"
        );
        assert_eq!(shorten_callerid("\"Ab\" <1234567890>", 5), None);
    }
}
