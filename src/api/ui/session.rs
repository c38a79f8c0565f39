//! UI sessions: who a browser is, and the CSRF token its forms carry.
//!
//! A session is a random token in an `HttpOnly`, `SameSite=Strict` cookie
//! (`Secure` under TLS) that expires; the server keeps the user and the
//! CSRF token. Every browser gets one, logged in or not, so that even the
//! login form and the forms of a registry without auth carry a token. A
//! login replaces the session (a token seen before login is never the one
//! that carries the user). Sessions live in memory: a restart logs
//! everyone out, which is the safe direction.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use parking_lot::Mutex;
use ring::rand::{SecureRandom, SystemRandom};

/// The cookie's name.
pub const COOKIE: &str = "ferro_session";

#[derive(Debug, Clone)]
pub struct Session {
    /// The logged-in user; `None` before login (or with auth off).
    pub user: Option<String>,
    pub csrf: String,
    expires: Instant,
}

/// The sessions of this process, bounded by `ui.sessions_max`.
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    lifetime: Duration,
    max: usize,
    random: SystemRandom,
}

/// A session found or made for a request, and the cookie to set when it
/// is new.
pub struct Current {
    pub token: String,
    pub session: Session,
    pub set_cookie: Option<String>,
}

impl Sessions {
    pub fn new(lifetime: Duration, max: usize) -> Sessions {
        debug_assert!(max > 0, "validated by the config");
        Sessions {
            map: Mutex::new(HashMap::new()),
            lifetime,
            max,
            random: SystemRandom::new(),
        }
    }

    fn random_hex(&self) -> String {
        let mut bytes = [0u8; 32];
        // The system's generator does not fail on Linux once booted; if it
        // ever did, an all-zero token would be guessable, so refuse.
        self.random
            .fill(&mut bytes)
            .expect("the system random generator works");
        hex::encode(bytes)
    }

    /// The request's live session, if its cookie names one.
    pub fn find(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let token = cookie_value(headers, COOKIE)?;
        let mut map = self.map.lock();
        match map.get(token) {
            Some(s) if s.expires > Instant::now() => Some((token.to_owned(), s.clone())),
            Some(_) => {
                map.remove(token);
                None
            }
            None => None,
        }
    }

    /// A new session for `user` (a login) or an anonymous one.
    pub fn create(&self, user: Option<String>, secure: bool) -> Current {
        let token = self.random_hex();
        let session = Session {
            user,
            csrf: self.random_hex(),
            expires: Instant::now() + self.lifetime,
        };
        let mut map = self.map.lock();
        if map.len() >= self.max {
            let now = Instant::now();
            map.retain(|_, s| s.expires > now);
        }
        if map.len() >= self.max {
            // Still full of live sessions: the one closest to expiry goes.
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(token.clone(), session.clone());
        Current {
            set_cookie: Some(self.cookie(&token, secure)),
            token,
            session,
        }
    }

    pub fn remove(&self, token: &str) {
        self.map.lock().remove(token);
    }

    fn cookie(&self, token: &str, secure: bool) -> String {
        format!(
            "{COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{}",
            self.lifetime.as_secs(),
            if secure { "; Secure" } else { "" }
        )
    }

    /// The `Set-Cookie` value that ends the session in the browser.
    pub fn expired_cookie(secure: bool) -> String {
        format!(
            "{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0{}",
            if secure { "; Secure" } else { "" }
        )
    }
}

/// A cookie's value from the request's `Cookie` headers.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Compares two tokens in time that does not depend on where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_cookie(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn a_new_session_is_found_by_its_cookie_and_removed_on_logout() {
        let s = Sessions::new(Duration::from_secs(60), 10);
        let c = s.create(Some("alice".into()), true);
        let cookie = c.set_cookie.unwrap();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        assert!(cookie.ends_with("; Secure"));
        let h = with_cookie(&format!("other=1; {COOKIE}={}", c.token));
        let (_, found) = s.find(&h).unwrap();
        assert_eq!(found.user.as_deref(), Some("alice"));
        assert_eq!(found.csrf, c.session.csrf);
        s.remove(&c.token);
        assert!(s.find(&h).is_none());
    }

    #[test]
    fn expired_sessions_are_not_found_and_the_bound_holds() {
        let s = Sessions::new(Duration::ZERO, 2);
        let c = s.create(None, false);
        assert!(s
            .find(&with_cookie(&format!("{COOKIE}={}", c.token)))
            .is_none());
        let s = Sessions::new(Duration::from_secs(60), 2);
        for _ in 0..5 {
            s.create(None, false);
        }
        assert_eq!(s.map.lock().len(), 2);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "ab"));
    }
}
