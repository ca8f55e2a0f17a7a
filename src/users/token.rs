//! Login tokens: JWT, HS256, signed with `JWT_SECRET`. Claims: `sub` (username), `role`,
//! `iat` and `exp` (Unix seconds, UTC).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use serde::{Deserialize, Serialize};

use super::Role;

/// JWT claims.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// Username.
    pub sub: String,
    /// Role.
    pub role: Role,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
}

/// Signs a token for `username` valid `ttl_secs` seconds from `now` (Unix seconds).
pub fn issue(
    secret: &str,
    username: &str,
    role: Role,
    now: i64,
    ttl_secs: u64,
) -> Result<(String, i64), jsonwebtoken::errors::Error> {
    let exp = now + ttl_secs as i64;
    let claims = Claims {
        sub: username.into(),
        role,
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

    #[test]
    fn round_trip_and_rejections() {
        let now = chrono::Utc::now().timestamp();
        let (t, exp) = issue("s3", "aziza", Role::Admin, now, 60).unwrap();
        assert_eq!(exp, now + 60);
        let c = verify("s3", &t).expect("valid token verifies");
        assert_eq!(c.sub, "aziza");
        assert_eq!(c.role, Role::Admin);
        assert!(verify("other", &t).is_none());
        let (old, _) = issue("s3", "aziza", Role::Admin, now - 120, 60).unwrap();
        assert!(verify("s3", &old).is_none());
    }
}
