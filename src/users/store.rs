//! SQL for users (one text per query for SQLite and PostgreSQL).

use chrono::Utc;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::Role;
use super::{User, UserError, hash_password, valid_username};
use crate::db::{Db, DbError, format_time};

fn role_str(r: Role) -> &'static str {
    match r {
        Role::Admin => "admin",
        Role::Viewer => "viewer",
    }
}

fn decode(row: &AnyRow) -> Result<User, DbError> {
    let role: String = row.try_get("role")?;
    Ok(User {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        role: if role == "admin" {
            Role::Admin
        } else {
            Role::Viewer
        },
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        token_version: row.try_get("token_version")?,
    })
}

/// Creates a user. Errors: bad name or password; `DbError::Conflict` when the name is taken.
pub async fn add(db: &Db, username: &str, password: &str, role: Role) -> Result<User, UserError> {
    valid_username(username)?;
    let hash = hash_password(password)?;
    let now = format_time(&Utc::now());
    let id = uuid::Uuid::new_v4().to_string();
    sqlx::query("INSERT INTO users (id, username, password_hash, role, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)")
        .bind(&id)
        .bind(username)
        .bind(&hash)
        .bind(role_str(role))
        .bind(&now)
        .execute(db.pool())
        .await
        .map_err(DbError::from)?;
    Ok(User {
        id,
        username: username.into(),
        role,
        created_at: now.clone(),
        updated_at: now,
        token_version: 0,
    })
}

/// Every user, by name.
pub async fn list(db: &Db) -> Result<Vec<User>, DbError> {
    let rows = sqlx::query(
        "SELECT id, username, role, created_at, updated_at, token_version FROM users ORDER BY username",
    )
    .fetch_all(db.pool())
    .await?;
    rows.iter().map(decode).collect()
}

/// Number of users.
pub async fn count(db: &Db) -> Result<i64, DbError> {
    Ok(sqlx::query("SELECT COUNT(*) AS n FROM users")
        .fetch_one(db.pool())
        .await?
        .try_get("n")?)
}

/// The user and their password hash, for login.
pub async fn find_for_login(db: &Db, username: &str) -> Result<Option<(User, String)>, DbError> {
    let row = sqlx::query("SELECT id, username, role, created_at, updated_at, token_version, password_hash FROM users WHERE username = $1")
        .bind(username)
        .fetch_optional(db.pool())
        .await?;
    match row {
        None => Ok(None),
        Some(r) => Ok(Some((decode(&r)?, r.try_get("password_hash")?))),
    }
}

/// Sets a new password and revokes every token issued before (token version + 1).
pub async fn set_password(db: &Db, username: &str, password: &str) -> Result<(), UserError> {
    let hash = hash_password(password)?;
    let n = sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2, token_version = token_version + 1 WHERE username = $3")
        .bind(&hash)
        .bind(format_time(&Utc::now()))
        .bind(username)
        .execute(db.pool())
        .await
        .map_err(DbError::from)?
        .rows_affected();
    if n == 0 {
        Err(UserError::NotFound(username.into()))
    } else {
        Ok(())
    }
}

/// Removes a user.
pub async fn remove(db: &Db, username: &str) -> Result<(), UserError> {
    let n = sqlx::query("DELETE FROM users WHERE username = $1")
        .bind(username)
        .execute(db.pool())
        .await
        .map_err(DbError::from)?
        .rows_affected();
    if n == 0 {
        Err(UserError::NotFound(username.into()))
    } else {
        Ok(())
    }
}
