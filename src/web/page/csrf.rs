//! CSRF protection for the page's actions: a double-submit token bound to
//! a cookie by an HMAC under a per-process secret.
//!
//! A browser gets a random nonce in the `cdrhook_csrf` cookie (HttpOnly,
//! SameSite=Strict); every form carries `HMAC-SHA256(secret, nonce)` in a
//! hidden field. A POST is carried out only when the field is the HMAC of
//! the cookie's nonce. Another site can neither read the cookie nor compute
//! the HMAC without the secret, which never leaves the process; a restart
//! makes a new secret, so forms rendered before it are refused (403) and
//! the operator reloads the page.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The cookie that holds the nonce.
pub const COOKIE: &str = "cdrhook_csrf";

/// The form field that holds the token.
pub const FIELD: &str = "csrf";

/// Random bytes in a nonce: 128 bits.
const NONCE_BYTES: usize = 16;

/// The per-process key tokens are made with.
pub struct Csrf {
    key: [u8; 32],
}

/// The kernel's random bytes (`getrandom(2)`).
pub fn random<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut buf = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: the pointer and length describe the unfilled tail of buf.
        let n = unsafe {
            libc::getrandom(
                buf[filled..].as_mut_ptr().cast::<libc::c_void>(),
                N - filled,
                0,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(buf)
}

impl Csrf {
    pub fn new(key: [u8; 32]) -> Csrf {
        Csrf { key }
    }

    /// A fresh nonce for a browser that has none (or a malformed one).
    pub fn new_nonce() -> std::io::Result<String> {
        Ok(B64.encode(random::<NONCE_BYTES>()?))
    }

    /// Whether a cookie value has the shape of a nonce this module makes.
    pub fn is_nonce(text: &str) -> bool {
        B64.decode(text).is_ok_and(|b| b.len() == NONCE_BYTES)
    }

    fn mac(&self, nonce: &str) -> Hmac<Sha256> {
        // HMAC takes a key of any length: new_from_slice cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(b"cdrhook page csrf\0");
        mac.update(nonce.as_bytes());
        mac
    }

    /// The token that forms carry for this nonce.
    pub fn token(&self, nonce: &str) -> String {
        B64.encode(self.mac(nonce).finalize().into_bytes())
    }

    /// Whether `token` is this nonce's (compared in constant time).
    pub fn verify(&self, nonce: &str, token: &str) -> bool {
        match B64.decode(token) {
            Ok(raw) => Self::is_nonce(nonce) && self.mac(nonce).verify_slice(&raw).is_ok(),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_only_with_its_nonce_and_key() {
        let c = Csrf::new([7; 32]);
        let other = Csrf::new([8; 32]);
        let n1 = Csrf::new_nonce().expect("random");
        let n2 = Csrf::new_nonce().expect("random");
        assert_ne!(n1, n2);
        assert!(Csrf::is_nonce(&n1));
        let t1 = c.token(&n1);
        // (nonce, token, accepted)
        for (nonce, token, ok) in [
            (n1.as_str(), t1.clone(), true),
            (n2.as_str(), t1.clone(), false),
            (n1.as_str(), other.token(&n1), false),
            (n1.as_str(), String::new(), false),
            (n1.as_str(), "not base64!".to_string(), false),
            (n1.as_str(), t1[..t1.len() - 2].to_string(), false),
            ("", c.token(""), false),
            ("short", c.token("short"), false),
        ] {
            assert_eq!(c.verify(nonce, &token), ok, "{nonce:?} {token:?}");
        }
    }
}
