//! SQL for extensions (table `extensions`, migration 0002): insert, replace, delete, lookups,
//! the filtered, paged list behind `GET /extensions`, and the provisioning outcome. One SQL
//! text per query for SQLite and PostgreSQL. Numbers sort numerically (`LENGTH`, then text).

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::model::{Extension, ProvState, Provisioning};
use crate::config::Secret;
use crate::db::{Db, DbError, format_time, get_bool, parse_time};

// `enabled` follows the one boolean convention (see `crate::db`): read with `get_bool`.
const COLUMNS: &str = "id, extension, display_name, context, transport, codecs, max_contacts, \
    enabled, realm, \
    password_digest, revision, prov_state, prov_applied_at, prov_error, created_at, updated_at";

const ORDER: &str = " ORDER BY LENGTH(extension), extension";

/// Inserts a new extension. [`DbError::Conflict`] when the number exists.
pub async fn insert(db: &Db, e: &Extension) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO extensions (id, extension, display_name, context, transport, codecs, max_contacts, enabled, realm, \
         password_digest, revision, prov_state, prov_applied_at, prov_error, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
    )
    .bind(&e.id)
    .bind(&e.extension)
    .bind(&e.display_name)
    .bind(&e.context)
    .bind(&e.transport)
    .bind(e.codecs.join(","))
    .bind(e.max_contacts)
    .bind(e.enabled)
    .bind(&e.realm)
    .bind(e.password_digest.expose())
    .bind(e.revision)
    .bind(e.provisioning.state.as_str())
    .bind(e.provisioning.applied_at.as_ref().map(format_time))
    .bind(e.provisioning.error.clone())
    .bind(format_time(&e.created_at))
    .bind(format_time(&e.updated_at))
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Replaces every field but `id` and `created_at`; sets `prov_state` to pending and bumps
/// `revision`. Returns the new revision, or None when the row is gone. [`DbError::Conflict`]
/// when the new number belongs to another extension.
pub async fn update(db: &Db, e: &Extension) -> Result<Option<i64>, DbError> {
    let row = sqlx::query(
        "UPDATE extensions SET extension = $2, display_name = $3, context = $4, transport = $5, codecs = $6, \
         max_contacts = $7, enabled = $8, realm = $9, password_digest = $10, revision = revision + 1, \
         prov_state = 'pending', prov_error = NULL, updated_at = $11 WHERE id = $1 RETURNING revision",
    )
    .bind(&e.id)
    .bind(&e.extension)
    .bind(&e.display_name)
    .bind(&e.context)
    .bind(&e.transport)
    .bind(e.codecs.join(","))
    .bind(e.max_contacts)
    .bind(e.enabled)
    .bind(&e.realm)
    .bind(e.password_digest.expose())
    .bind(format_time(&e.updated_at))
    .fetch_optional(db.pool())
    .await?;
    Ok(match row {
        Some(r) => Some(r.try_get::<i64, _>("revision")?),
        None => None,
    })
}

/// Deletes by id; returns the deleted row, None when there was none.
pub async fn delete(db: &Db, id: &str) -> Result<Option<Extension>, DbError> {
    let sql = format!("DELETE FROM extensions WHERE id = $1 RETURNING {COLUMNS}");
    let row = sqlx::query(&sql).bind(id).fetch_optional(db.pool()).await?;
    row.as_ref().map(from_row).transpose()
}

/// One extension by id.
pub async fn get(db: &Db, id: &str) -> Result<Option<Extension>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM extensions WHERE id = $1");
    let row = sqlx::query(&sql).bind(id).fetch_optional(db.pool()).await?;
    row.as_ref().map(from_row).transpose()
}

/// One extension by number.
pub async fn get_by_number(db: &Db, number: &str) -> Result<Option<Extension>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM extensions WHERE extension = $1");
    let row = sqlx::query(&sql)
        .bind(number)
        .fetch_optional(db.pool())
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Every extension, by number.
pub async fn all(db: &Db) -> Result<Vec<Extension>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM extensions{ORDER}");
    let rows = sqlx::query(&sql).fetch_all(db.pool()).await?;
    rows.iter().map(from_row).collect()
}

/// A page of extensions whose number or display name contains `q` (case-insensitive), by
/// number, and the total that match.
pub async fn list(
    db: &Db,
    q: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Extension>, i64), DbError> {
    let pattern = q.filter(|q| !q.is_empty()).map(|q| {
        let escaped = q
            .to_lowercase()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        format!("%{escaped}%")
    });
    let filter = " WHERE ($1 IS NULL OR extension LIKE $1 ESCAPE '\\' OR LOWER(display_name) LIKE $1 ESCAPE '\\')";
    let total: i64 = sqlx::query(&format!("SELECT COUNT(*) AS n FROM extensions{filter}"))
        .bind(pattern.clone())
        .fetch_one(db.pool())
        .await?
        .try_get("n")?;
    let sql = format!("SELECT {COLUMNS} FROM extensions{filter}{ORDER} LIMIT $2 OFFSET $3");
    let rows = sqlx::query(&sql)
        .bind(pattern)
        .bind(limit)
        .bind(offset)
        .fetch_all(db.pool())
        .await?;
    Ok((rows.iter().map(from_row).collect::<Result<_, _>>()?, total))
}

/// Records the outcome for the version that was rendered: only when `revision` still
/// matches (a newer change stays pending). True when the row was updated.
pub async fn set_provisioning(
    db: &Db,
    id: &str,
    revision: i64,
    p: &Provisioning,
) -> Result<bool, DbError> {
    let done = sqlx::query("UPDATE extensions SET prov_state = $3, prov_applied_at = $4, prov_error = $5 WHERE id = $1 AND revision = $2")
        .bind(id)
        .bind(revision)
        .bind(p.state.as_str())
        .bind(p.applied_at.as_ref().map(format_time))
        .bind(p.error.clone())
        .execute(db.pool())
        .await?;
    Ok(done.rows_affected() > 0)
}

fn from_row(row: &AnyRow) -> Result<Extension, DbError> {
    let time = |c: &'static str| -> Result<DateTime<Utc>, DbError> {
        parse_time(c, &row.try_get::<String, _>(c)?)
    };
    let state: String = row.try_get("prov_state")?;
    let applied_at = match row.try_get::<Option<String>, _>("prov_applied_at")? {
        Some(s) => Some(parse_time("prov_applied_at", &s)?),
        None => None,
    };
    Ok(Extension {
        id: row.try_get("id")?,
        extension: row.try_get("extension")?,
        display_name: row.try_get("display_name")?,
        context: row.try_get("context")?,
        transport: row.try_get("transport")?,
        codecs: row
            .try_get::<String, _>("codecs")?
            .split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect(),
        max_contacts: row.try_get("max_contacts")?,
        enabled: get_bool(row, "enabled")?,
        realm: row.try_get("realm")?,
        password_digest: Secret::new(row.try_get::<String, _>("password_digest")?),
        revision: row.try_get("revision")?,
        provisioning: Provisioning {
            state: ProvState::parse(&state).ok_or_else(|| DbError::Decode {
                column: "prov_state",
                reason: format!("{state:?}"),
            })?,
            applied_at,
            error: row.try_get("prov_error")?,
        },
        created_at: time("created_at")?,
        updated_at: time("updated_at")?,
    })
}
