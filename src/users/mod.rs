//! Users of the web app: argon2id password hashes, roles (admin, viewer), JWT login tokens
//! (HS256 with `JWT_SECRET`, lifetime `JWT_TTL`; a token is honoured only while its user
//! exists and its token version has not changed since it was issued), and the per-IP / per-username limit on
//! failed logins.

pub mod limiter;
pub mod store;
pub mod ticket;
pub mod token;

use argon2::Argon2;
use argon2::password_hash::{
    PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng,
};

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read everything, change everything.
    Admin,
    /// Read only.
    Viewer,
}

/// Errors of the users layer.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// Storage failed (a duplicate username is `DbError::Conflict`).
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    /// Hashing failed.
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// The username is not acceptable.
    #[error("username must be 1 to 64 characters of letters, digits, '.', '_', '-' or '@'")]
    BadUsername,
    /// The password is not acceptable.
    #[error("password must be 8 to 128 characters")]
    BadPassword,
    /// No such user.
    #[error("no user named {0:?}")]
    NotFound(String),
}

/// One user (never carries the password hash out of the store).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// UUID.
    pub id: String,
    /// Login name.
    pub username: String,
    /// Rights.
    pub role: Role,
    /// When created (UTC, stored format).
    pub created_at: String,
    /// When last changed.
    pub updated_at: String,
    /// Incremented whenever the user's tokens are revoked (see `token`); not shown.
    #[serde(skip)]
    pub token_version: i64,
}

/// Checks a username: 1–64 of `[A-Za-z0-9._@-]`.
pub fn valid_username(name: &str) -> Result<(), UserError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(UserError::BadUsername)
    }
}

/// Hashes a password with argon2id (PHC string with its own salt).
pub fn hash_password(password: &str) -> Result<String, UserError> {
    if password.chars().count() < 8 || password.chars().count() > 128 {
        return Err(UserError::BadPassword);
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UserError::Hash(e.to_string()))
}

/// True when `password` matches the stored argon2 hash.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// An argon2id hash of a random password, made once: checked instead when a login names no
/// known user, so that an unknown username costs what a wrong password does (no user
/// enumeration by timing).
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        let random = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(random.as_str().as_bytes(), &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// Password checks (argon2) running at once, at most: each takes tens of milliseconds of
/// CPU and about 19 MiB, so a burst of logins queues here instead of taking every core
/// (and the memory) from live fan-out and ARI ingest.
pub const ARGON2_CONCURRENCY: usize = 2;

fn argon2_permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(ARGON2_CONCURRENCY);
    &PERMITS
}

/// Checks a login's password against the user's stored hash (`None`: no such user) on the
/// blocking pool, at most [`ARGON2_CONCURRENCY`] at a time, since argon2 must not stall the
/// async runtime (live fan-out, ARI ingest). Without a user the dummy hash is checked, so
/// both failures take as long. True only for a known user with the right password.
pub async fn verify_login(password: String, hash: Option<String>) -> bool {
    let Ok(_permit) = argon2_permits().acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || {
        let dummy = dummy_hash();
        let matched = verify_password(&password, hash.as_deref().unwrap_or(dummy));
        matched && hash.is_some()
    })
    .await
    .unwrap_or(false)
}

/// A login: the user when `username` exists and `password` is theirs, else None. An unknown
/// user and a wrong password take the same time (one argon2 check each, see
/// [`verify_login`]). Errors: the user lookup failed.
pub async fn check_login(
    db: &crate::db::Db,
    username: &str,
    password: String,
) -> Result<Option<User>, crate::db::DbError> {
    let (user, hash) = match store::find_for_login(db, username).await? {
        Some((user, hash)) => (Some(user), Some(hash)),
        None => (None, None),
    };
    let ok = verify_login(password, hash).await;
    Ok(user.filter(|_| ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn verify_login_takes_the_right_password_of_a_known_user_only() {
        let hash = hash_password("correct horse").unwrap();
        assert!(verify_login("correct horse".into(), Some(hash.clone())).await);
        assert!(!verify_login("wrong horse!".into(), Some(hash)).await);
        assert!(!verify_login("correct horse".into(), None).await);
        assert!(!verify_login(String::new(), None).await);
    }
}
