//! Login tokens: JWT, HS256, signed with `JWT_SECRET`. Claims: `sub` (username), `uid`
//! (the user's id), `ver` (the user's token version when issued), `role`, `iat` and `exp`
//! (Unix seconds, UTC). A token is honoured only while `uid` and `ver` match the user's row:
//! bumping the version (`user passwd`) or removing the user revokes it at once, even within
//! the second it was issued; a user removed and added again under the same name has a new id.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use serde::{Deserialize, Serialize};

use super::{Role, User};

/// JWT claims.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// Username.
    pub sub: String,
    /// The user's id (UUID); empty in tokens of older releases (refused).
    #[serde(default)]
    pub uid: String,
    /// The user's token version when the token was issued.
    #[serde(default)]
    pub ver: i64,
    /// Role.
    pub role: Role,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
}

/// Signs a token for `user` (its name, id, role and token version) valid `ttl_secs`
/// seconds from `now` (Unix seconds). Returns the token and its expiry (Unix seconds).
pub fn issue(
    secret: &str,
    user: &User,
    now: i64,
    ttl_secs: u64,
) -> Result<(String, i64), jsonwebtoken::errors::Error> {
    let exp = now.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX));
    let claims = Claims {
        sub: user.username.clone(),
        uid: user.id.clone(),
        ver: user.token_version,
        role: user.role,
        iat: now,
        exp,
    };
    let token = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?;
    Ok((token, exp))
}

/// Verifies signature, algorithm and expiry; returns the claims.
pub fn verify(secret: &str, token: &str) -> Option<Claims> {
    let mut v = Validation::new(Algorithm::HS256);
    v.leeway = 0;
    decode::<Claims>(token, &DecodingKey::from_secret(secret.as_bytes()), &v)
        .ok()
        .map(|d| d.claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User {
            id: "u-1".into(),
            username: "aziza".into(),
            role: Role::Admin,
            created_at: String::new(),
            updated_at: String::new(),
            token_version: 3,
        }
    }

    #[test]
    fn round_trip_and_rejections() {
        let now = chrono::Utc::now().timestamp();
        let (t, exp) = issue("s3", &user(), now, 60).unwrap();
        assert_eq!(exp, now + 60);
        let c = verify("s3", &t).expect("valid token verifies");
        assert_eq!(c.sub, "aziza");
        assert_eq!(c.role, Role::Admin);
        assert_eq!((c.uid.as_str(), c.ver), ("u-1", 3));
        assert!(verify("other", &t).is_none());
        let (old, _) = issue("s3", &user(), now - 120, 60).unwrap();
        assert!(verify("s3", &old).is_none());
    }
}
