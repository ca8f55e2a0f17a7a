//! SIP passwords: the stored digest (Asterisk 22.2+ `auth_type = digest` with
//! `password_digest = MD5:<hex>,SHA-256:<hex>`, each of `extension:realm:password`, RFC 7616
//! HA1) and generated passwords. The plain password is never stored.

use md5::Md5;
use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};

use crate::config::Secret;

/// `MD5:<hex>,SHA-256:<hex>` of `user:realm:password` (lowercase hex).
pub fn password_digest(user: &str, realm: &str, password: &Secret) -> Secret {
    let ha1 = format!("{user}:{realm}:{}", password.expose());
    let md5 = hex::encode(Md5::digest(ha1.as_bytes()));
    let sha = hex::encode(Sha256::digest(ha1.as_bytes()));
    Secret::new(format!("MD5:{md5},SHA-256:{sha}"))
}

/// A strong random password: 20 letters and digits (~119 bits), never containing `extension`.
pub fn generate_password(extension: &str) -> Secret {
    let mut rng = rand::rng();
    loop {
        let pw: String = (&mut rng)
            .sample_iter(Alphanumeric)
            .take(20)
            .map(char::from)
            .collect();
        let has_all = pw.bytes().any(|b| b.is_ascii_digit())
            && pw.bytes().any(|b| b.is_ascii_lowercase())
            && pw.bytes().any(|b| b.is_ascii_uppercase());
        if has_all && (extension.is_empty() || !pw.contains(extension)) {
            return Secret::new(pw);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_known_ha1() {
        // Independently computed: md5 / sha256 of "1001:asterisk:secret1001".
        let d = password_digest("1001", "asterisk", &Secret::new("secret1001"));
        assert_eq!(
            d.expose(),
            "MD5:33e8cc046e405780eda4647fa27e7a78,SHA-256:ce5c88a48f6c6280f53908d8cbb36b97091b5e7233e5e1b01649a0b8ab364168"
        );
    }

    #[test]
    fn generated_passwords_validate() {
        for _ in 0..100 {
            let p = generate_password("12");
            assert!(crate::extensions::validate::check_password(p.expose(), "12").is_ok());
        }
    }
}
