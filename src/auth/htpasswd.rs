//! The htpasswd file: `user:hash` lines with bcrypt hashes, as written by
//! `htpasswd -B` (`$2y$`, also `$2a$`/`$2b$`). Other hash kinds (MD5,
//! SHA-1, crypt) are refused when the file is loaded, naming the line, so a
//! user is never silently locked out or let in.
//!
//! bcrypt is slow by design (tens of milliseconds at cost 10). A client
//! sending Basic credentials on every request would pay that each time, so
//! credentials that verified are remembered for a short while, keyed by a
//! SHA-256 of user and password (the password itself is not kept).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};

use crate::limits::{CREDENTIAL_CACHE_ENTRIES_MAX, CREDENTIAL_CACHE_SECS};

/// Users and their bcrypt hashes.
#[derive(Clone, Default)]
pub struct Htpasswd {
    users: Arc<HashMap<String, String>>,
    verified: Arc<Mutex<HashMap<[u8; 32], Instant>>>,
}

/// A hash to verify against when the user does not exist, so an unknown
/// user costs as much time as a wrong password (made once, at the cost
/// `htpasswd -B` uses by default).
fn dummy_hash() -> String {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| bcrypt::hash("not a password", 5).unwrap_or_default())
        .clone()
}

impl Htpasswd {
    pub fn load(path: &Path) -> Result<Htpasswd, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read htpasswd file {}: {e}", path.display()))?;
        Htpasswd::parse(&text).map_err(|e| format!("htpasswd file {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Htpasswd, String> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("line {}: expected user:hash", i + 1))?;
            if user.is_empty() {
                return Err(format!("line {}: empty user name", i + 1));
            }
            if !["$2y$", "$2a$", "$2b$"].iter().any(|p| hash.starts_with(p)) {
                return Err(format!(
                    "line {} (user {user:?}): not a bcrypt hash; write it with `htpasswd -B`",
                    i + 1
                ));
            }
            users.insert(user.to_owned(), hash.to_owned());
        }
        Ok(Htpasswd {
            users: Arc::new(users),
            verified: Arc::default(),
        })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `password` is `user`'s. Runs bcrypt on the blocking pool.
    pub async fn verify(&self, user: &str, password: &str) -> bool {
        let key = cache_key(user, password);
        if let Some(at) = self.verified.lock().get(&key) {
            if at.elapsed() < Duration::from_secs(CREDENTIAL_CACHE_SECS) {
                return true;
            }
        }
        let (known, hash) = match self.users.get(user) {
            Some(h) => (true, h.clone()),
            None => (false, String::new()),
        };
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || {
            let hash = if known { hash } else { dummy_hash() };
            bcrypt::verify(password, &hash)
        })
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(false)
            && known;
        if ok {
            let mut cache = self.verified.lock();
            if cache.len() >= CREDENTIAL_CACHE_ENTRIES_MAX {
                let ttl = Duration::from_secs(CREDENTIAL_CACHE_SECS);
                cache.retain(|_, at| at.elapsed() < ttl);
                if cache.len() >= CREDENTIAL_CACHE_ENTRIES_MAX {
                    cache.clear();
                }
            }
            cache.insert(key, Instant::now());
        }
        ok
    }
}

fn cache_key(user: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(user.as_bytes());
    h.update([0]);
    h.update(password.as_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bcrypt_lines() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let file = Htpasswd::parse(&format!("# comment\n\nalice:{hash}\n")).unwrap();
        assert_eq!(file.len(), 1);
        assert!(file.verify("alice", "s3cret").await);
        assert!(file.verify("alice", "s3cret").await, "cached");
        assert!(!file.verify("alice", "wrong").await);
        assert!(!file.verify("bob", "s3cret").await);
    }

    #[test]
    fn refuses_other_hashes() {
        assert!(Htpasswd::parse("alice:$apr1$abc$def").is_err());
        assert!(Htpasswd::parse("alice:{SHA}abc").is_err());
        assert!(Htpasswd::parse("no colon").is_err());
    }

    #[test]
    fn dummy_hash_is_bcrypt() {
        assert!(!bcrypt::verify("x", &dummy_hash()).unwrap());
    }
}
