//! Short content digests. A rendered pipeline's version and the names of its link configs carry
//! one, so they change exactly when what they name does: wadm stores every change as a new
//! version, and a link whose config changed is seen to differ from the one the host holds.

use sha2::{Digest as _, Sha256};

/// The first 10 hex digits of the SHA-256 of `content`.
#[must_use]
pub fn short(content: &[u8]) -> String {
    let hash = Sha256::digest(content);
    hash.iter().take(5).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_content_gives_the_same_digest_and_any_change_another() {
        assert_eq!(short(b"bucket=a"), short(b"bucket=a"));
        assert_ne!(short(b"bucket=a"), short(b"bucket=b"));
        assert_eq!(short(b"").len(), 10);
        // SHA-256("abc") starts ba7816bf8f.
        assert_eq!(short(b"abc"), "ba7816bf8f");
    }
}
