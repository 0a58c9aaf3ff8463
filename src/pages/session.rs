//! Dashboard sessions: a login exchanges the API token for a random session id kept in an
//! `HttpOnly`, `SameSite=Strict` cookie; each session has its own CSRF token, which every form
//! carries. The login form itself is tied to a short-lived nonce cookie the same way.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "gitopsd_session";
/// The login form's nonce cookie.
pub const LOGIN_COOKIE: &str = "gitopsd_login";
/// How long a session lasts without being used.
pub const SESSION_IDLE: Duration = Duration::from_secs(8 * 3600);
/// How long a login form stays valid.
const LOGIN_FORM_LIFE: Duration = Duration::from_secs(15 * 60);
/// Sessions and login forms kept at most (the oldest go first).
const MAX_ENTRIES: usize = 1024;

/// A logged-in session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Its CSRF token: every form of the session carries it.
    pub csrf: String,
    /// What the journal and logs call it (`session 3 from 127.0.0.1`): never its id.
    pub label: String,
}

#[derive(Debug, Default)]
struct Entries {
    sessions: HashMap<String, (Session, Instant)>,
    login_forms: HashMap<String, Instant>,
    opened: u64,
}

/// Every live session and login form.
#[derive(Debug, Default)]
pub struct Sessions(Mutex<Entries>);

/// 32 random bytes as hex, from the system's CSPRNG.
pub fn random_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Constant-time comparison, so a token cannot be guessed byte by byte from timings.
pub fn same(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A new login form's nonce (its cookie and its hidden field).
    pub fn login_form(&self, now: Instant) -> Result<String, getrandom::Error> {
        let nonce = random_token()?;
        let mut entries = self.lock();
        entries
            .login_forms
            .retain(|_, made| now.saturating_duration_since(*made) < LOGIN_FORM_LIFE);
        if entries.login_forms.len() >= MAX_ENTRIES {
            entries.login_forms.clear();
        }
        entries.login_forms.insert(nonce.clone(), now);
        Ok(nonce)
    }

    /// Whether a login's cookie and field carry the same live nonce; it is used up.
    pub fn take_login_form(&self, cookie: &str, field: &str, now: Instant) -> bool {
        if cookie.is_empty() || !same(cookie, field) {
            return false;
        }
        let made = self.lock().login_forms.remove(cookie);
        made.is_some_and(|made| now.saturating_duration_since(made) < LOGIN_FORM_LIFE)
    }

    /// Opens a session for `peer`; answers its id (the cookie's value).
    pub fn open(&self, peer: std::net::IpAddr, now: Instant) -> Result<String, getrandom::Error> {
        let id = random_token()?;
        let csrf = random_token()?;
        let mut entries = self.lock();
        entries
            .sessions
            .retain(|_, (_, used)| now.saturating_duration_since(*used) < SESSION_IDLE);
        if entries.sessions.len() >= MAX_ENTRIES
            && let Some(oldest) = entries
                .sessions
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(id, _)| id.clone())
        {
            entries.sessions.remove(&oldest);
        }
        entries.opened += 1;
        let label = format!("dashboard session {} from {peer}", entries.opened);
        entries
            .sessions
            .insert(id.clone(), (Session { csrf, label }, now));
        Ok(id)
    }

    /// The live session of a cookie's id, if any (its idle time starts over).
    pub fn get(&self, id: &str, now: Instant) -> Option<Session> {
        let mut entries = self.lock();
        let (session, used) = entries.sessions.get_mut(id)?;
        if now.saturating_duration_since(*used) >= SESSION_IDLE {
            entries.sessions.remove(id);
            return None;
        }
        *used = now;
        Some(session.clone())
    }

    /// Ends a session.
    pub fn close(&self, id: &str) {
        self.lock().sessions.remove(id);
    }
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, the whole site; `max_age` zero removes it.
pub fn set_cookie(name: &str, value: &str, max_age: Duration) -> String {
    format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        max_age.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_has_its_own_csrf_token_and_expires_when_idle() {
        let sessions = Sessions::default();
        let start = Instant::now();
        let peer = [127, 0, 0, 1].into();
        let one = sessions.open(peer, start).expect("random");
        let two = sessions.open(peer, start).expect("random");
        assert_ne!(one, two);
        let first = sessions.get(&one, start).expect("live");
        let second = sessions.get(&two, start).expect("live");
        assert_ne!(first.csrf, second.csrf);
        assert_ne!(first.csrf, one, "the CSRF token is not the session id");
        assert!(!first.label.contains(&one), "the label never shows the id");
        assert_eq!(sessions.get(&one, start + SESSION_IDLE), None);
        sessions.close(&two);
        assert_eq!(sessions.get(&two, start), None);
        assert_eq!(sessions.get("nonsense", start), None);
    }

    #[test]
    fn a_login_form_nonce_works_once_and_only_with_its_cookie() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let nonce = sessions.login_form(now).expect("random");
        assert!(!sessions.take_login_form(&nonce, "other", now));
        assert!(!sessions.take_login_form("", "", now));
        assert!(sessions.take_login_form(&nonce, &nonce, now));
        assert!(!sessions.take_login_form(&nonce, &nonce, now), "used up");
        let late = sessions.login_form(now).expect("random");
        assert!(!sessions.take_login_form(&late, &late, now + LOGIN_FORM_LIFE));
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            axum::http::header::COOKIE,
            "a=1; gitopsd_session=abc; b=2".parse().expect("header"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "c"), None);
        let set = set_cookie(SESSION_COOKIE, "abc", SESSION_IDLE);
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{set}"
        );
    }
}
