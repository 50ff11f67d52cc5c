//! Console sessions: a bearer token exchanged for an HttpOnly session cookie with a CSRF token.
//!
//! `POST /api/v1/session` checks a bearer token (the body's `token`) and answers with a
//! `holdfast_session` cookie (32 random bytes, base64url) and, in the body, a CSRF token that the
//! page sends back as `X-CSRF-Token` on every request that is not GET/HEAD ([`csrf_guard`], a
//! middleware that runs before every handler). The table ([`Sessions`]) is in memory and keeps
//! only the SHA-256 of each session id; logs, errors and logbook entries name a session by the
//! first 16 hex digits of that hash ([`Ended::tag`]), never the id or the CSRF token.
//!
//! A session stores the user's *name*: [`crate::api::authenticate`] looks the principal up by
//! name in the current config on every request, so a reload that changes a user's role or sites
//! applies at once and one that removes the user ends their sessions. A session unused for
//! `console.session_idle` (monotonic clock) ends: noticed on use (401) or by the sweep task
//! ([`run`], every [`SWEEP_EVERY`]); either way one `session.end` entry with `why: "idle"`. At
//! most [`MAX_PER_USER`] sessions per user and [`MAX_SESSIONS`] in all: a new one ends the oldest
//! (`why: "evicted"`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;

use super::auth::Principal;
use super::{ApiError, AppState, Live};
use crate::logbook::NewEntry;
use crate::roles::{Purposes, PERMISSIONS};

/// The session cookie's name.
pub const COOKIE: &str = "holdfast_session";
/// The request header that carries the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Most sessions one user may have; a new one ends their oldest.
pub const MAX_PER_USER: usize = 16;
/// Most sessions in all; a new one ends the oldest.
pub const MAX_SESSIONS: usize = 4096;
/// How often the sweep task ends idle sessions and those of removed users.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Largest sign-in body.
pub const SIGN_IN_BODY_LIMIT: usize = 4096;
/// Longest user agent kept in a `session.start` entry, in characters.
const MAX_USER_AGENT: usize = 200;

/// The answer to an idle-expired session.
const EXPIRED: &str = "your session has expired; sign in again";
/// The answer to a missing or wrong CSRF token or a foreign `Origin`.
const CSRF_REFUSED: &str = "missing or wrong CSRF token";

/// One signed-in browser.
#[derive(Debug, Clone)]
struct Session {
    user: String,
    /// The SHA-256 of the bearer token the session was opened with: a config that gives the
    /// user another token (a leaked one revoked) ends the session.
    token: [u8; 32],
    csrf: String,
    last_use: Instant,
    remote: IpAddr,
    created: Instant,
    /// Creation order (eviction ends the lowest).
    serial: u64,
}

/// A session that ended other than by signing out, for its `session.end` logbook entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// The user it belonged to.
    pub user: String,
    /// The first 16 hex digits of the SHA-256 of the session id.
    pub tag: String,
    /// `idle`, `evicted`, `user removed` or `signed out`.
    pub why: &'static str,
    /// Where it was started from.
    pub remote: IpAddr,
}

/// What a session id is, when used.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A live session: its user and CSRF token (its idle clock is now reset).
    Live {
        /// User name.
        user: String,
        /// CSRF token.
        csrf: String,
        /// SHA-256 of the token the session was opened with.
        token: [u8; 32],
    },
    /// It was idle too long and has just ended.
    Expired(Ended),
    /// No such session.
    Unknown,
}

/// The session table (pure: the caller passes the time), keyed by the SHA-256 of the id.
#[derive(Debug, Default)]
pub struct Table {
    sessions: HashMap<[u8; 32], Session>,
    serial: u64,
}

/// The SHA-256 of a session id.
pub fn hash_id(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// The name of a session in logs and the logbook: 16 hex digits of its id's hash.
pub fn tag_of(hash: &[u8; 32]) -> String {
    hex::encode(&hash[..8])
}

/// 32 bytes from the OS random number generator, base64url without padding.
fn random_token() -> String {
    use rand::TryRngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut b)
        .expect("the OS random number generator works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Whether `given` is the CSRF token `want`, compared in constant time (for equal lengths; a
/// length difference says only that the length is wrong).
pub fn csrf_matches(want: &str, given: &str) -> bool {
    !want.is_empty() && bool::from(want.as_bytes().ct_eq(given.as_bytes()))
}

impl Table {
    /// Adds a session with a given id hash and CSRF token, ending the user's oldest past
    /// [`MAX_PER_USER`] and the oldest of all past [`MAX_SESSIONS`] (returned, `why: evicted`).
    pub fn insert(
        &mut self,
        hash: [u8; 32],
        user: &str,
        token: [u8; 32],
        csrf: String,
        remote: IpAddr,
        now: Instant,
    ) -> Vec<Ended> {
        let mut ended = Vec::new();
        loop {
            let mine: Vec<(&[u8; 32], u64)> = self
                .sessions
                .iter()
                .filter(|(_, s)| s.user == user)
                .map(|(h, s)| (h, s.serial))
                .collect();
            let victim = if mine.len() >= MAX_PER_USER {
                mine.into_iter()
                    .min_by_key(|(_, serial)| *serial)
                    .map(|(h, _)| *h)
            } else if self.sessions.len() >= MAX_SESSIONS {
                self.sessions
                    .iter()
                    .min_by_key(|(_, s)| s.serial)
                    .map(|(h, _)| *h)
            } else {
                None
            };
            match victim {
                Some(h) => ended.extend(self.remove(&h, "evicted")),
                None => break,
            }
        }
        self.serial += 1;
        self.sessions.insert(
            hash,
            Session {
                user: user.to_owned(),
                token,
                csrf,
                last_use: now,
                remote,
                created: now,
                serial: self.serial,
            },
        );
        ended
    }

    /// Uses a session: live (idle clock reset), just expired (removed), or unknown.
    pub fn touch(&mut self, hash: &[u8; 32], now: Instant, idle: Duration) -> Lookup {
        let Some(s) = self.sessions.get_mut(hash) else {
            return Lookup::Unknown;
        };
        if now.saturating_duration_since(s.last_use) >= idle {
            return match self.remove(hash, "idle") {
                Some(e) => Lookup::Expired(e),
                None => Lookup::Unknown,
            };
        }
        s.last_use = now;
        Lookup::Live {
            user: s.user.clone(),
            csrf: s.csrf.clone(),
            token: s.token,
        }
    }

    /// The user, CSRF token and token hash of a session that is not idle-expired, without
    /// using it.
    pub fn peek(
        &self,
        hash: &[u8; 32],
        now: Instant,
        idle: Duration,
    ) -> Option<(String, String, [u8; 32])> {
        self.sessions
            .get(hash)
            .filter(|s| now.saturating_duration_since(s.last_use) < idle)
            .map(|s| (s.user.clone(), s.csrf.clone(), s.token))
    }

    /// Ends a session.
    pub fn remove(&mut self, hash: &[u8; 32], why: &'static str) -> Option<Ended> {
        self.sessions.remove(hash).map(|s| Ended {
            user: s.user,
            tag: tag_of(hash),
            why,
            remote: s.remote,
        })
    }

    /// Ends every idle session and every session whose user no longer exists.
    pub fn sweep(
        &mut self,
        now: Instant,
        idle: Duration,
        ends: impl Fn(&str, &[u8; 32]) -> Option<&'static str>,
    ) -> Vec<Ended> {
        let due: Vec<([u8; 32], &'static str)> = self
            .sessions
            .iter()
            .filter_map(|(h, s)| {
                if let Some(why) = ends(&s.user, &s.token) {
                    Some((*h, why))
                } else if now.saturating_duration_since(s.last_use) >= idle {
                    Some((*h, "idle"))
                } else {
                    None
                }
            })
            .collect();
        due.into_iter()
            .filter_map(|(h, why)| self.remove(&h, why))
            .collect()
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// How long ago a session was started (for tests and diagnostics).
    pub fn age(&self, hash: &[u8; 32], now: Instant) -> Option<Duration> {
        self.sessions
            .get(hash)
            .map(|s| now.saturating_duration_since(s.created))
    }
}

/// The live session table of the daemon, and where ended sessions go to be logged.
pub struct Sessions {
    table: Mutex<Table>,
    tls: bool,
    ended: mpsc::UnboundedSender<Ended>,
}

/// The receiving end of the ended sessions, for [`run`].
pub struct EndedSessions(mpsc::UnboundedReceiver<Ended>);

impl Sessions {
    /// An empty table; `tls` says whether the daemon serves HTTPS (the cookie's `Secure`).
    pub fn new(tls: bool) -> (Sessions, EndedSessions) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Sessions {
                table: Mutex::new(Table::default()),
                tls,
                ended: tx,
            },
            EndedSessions(rx),
        )
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn report(&self, ended: impl IntoIterator<Item = Ended>) {
        for e in ended {
            tracing::info!(session = %e.tag, user = %e.user, why = e.why, "console session ended");
            let _ = self.ended.send(e);
        }
    }

    /// The principal of a request's session cookie, looked up by name in `live` (the idle
    /// clock reset): 401 when there is none, it expired, or its user is gone.
    pub fn authenticate(&self, live: &Live, id: &str) -> Result<Arc<Principal>, ApiError> {
        let hash = hash_id(id);
        let idle = live.console.session_idle;
        let found = self.table().touch(&hash, Instant::now(), idle);
        match found {
            Lookup::Live { user, token, .. } => match live.auth.by_name_and_token(&user, &token) {
                Some(p) => Ok(p),
                None => {
                    let ended = self.table().remove(&hash, why_gone(live, &user));
                    self.report(ended);
                    Err(no_session())
                }
            },
            Lookup::Expired(e) => {
                self.report([e]);
                Err(ApiError::new(StatusCode::UNAUTHORIZED, EXPIRED))
            }
            Lookup::Unknown => Err(no_session()),
        }
    }

    /// The user of a live session (looked up in `live`), without using it.
    pub fn user_of(&self, live: &Live, id: &str) -> Option<Arc<Principal>> {
        let found = self
            .table()
            .peek(&hash_id(id), Instant::now(), live.console.session_idle);
        found.and_then(|(user, _, token)| live.auth.by_name_and_token(&user, &token))
    }

    /// The CSRF token of a live session, without using it.
    fn csrf_of(&self, id: &str, idle: Duration) -> Option<String> {
        self.table()
            .peek(&hash_id(id), Instant::now(), idle)
            .map(|(_, csrf, _)| csrf)
    }

    /// Ends idle sessions and those of users that `live` no longer has.
    pub fn sweep(&self, live: &Live) {
        let ended = self
            .table()
            .sweep(Instant::now(), live.console.session_idle, |u, token| {
                live.auth
                    .by_name_and_token(u, token)
                    .is_none()
                    .then(|| why_gone(live, u))
            });
        self.report(ended);
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.table().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.table().is_empty()
    }

    /// Whether the daemon serves HTTPS.
    pub fn tls(&self) -> bool {
        self.tls
    }
}

/// Why a session whose user no longer matches the config ends: the user is gone, or has
/// another token now (a leaked token revoked ends every session opened with it).
fn why_gone(live: &Live, user: &str) -> &'static str {
    if live.auth.by_name(user).is_some() {
        "token changed"
    } else {
        "user removed"
    }
}

fn no_session() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "a valid bearer token or session is required",
    )
}

/// The value of the session cookie, if the request has one.
pub fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// Whether a request is authenticated by its cookie (no `Authorization` header, a cookie).
pub fn uses_cookie(headers: &HeaderMap) -> Option<&str> {
    if headers.contains_key(header::AUTHORIZATION) {
        return None;
    }
    cookie(headers)
}

/// Writes the `session.end` entries of sessions that ended other than by signing out, and
/// sweeps the table every [`SWEEP_EVERY`]. Ends when the daemon's state is gone.
pub async fn run(state: Weak<AppState>, ended: EndedSessions) {
    let mut rx = ended.0;
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            e = rx.recv() => {
                let (Some(e), Some(st)) = (e, state.upgrade()) else { return };
                let live = st.live();
                let principal = live.auth.by_name(&e.user);
                let entry = NewEntry {
                    user: e.user.clone(),
                    role: principal.as_ref().map_or_else(|| "-".to_owned(), |p| p.role.clone()),
                    action: "session.end".into(),
                    object: json!({ "why": e.why, "session": e.tag }),
                    sites: principal.and_then(|p| p.sites.clone()).unwrap_or_default(),
                    ..Default::default()
                };
                if let Err(err) = st.record(entry).await {
                    tracing::error!(error = ?err, session = %e.tag, "could not log the end of a session");
                }
            }
            _ = tick.tick() => {
                let Some(st) = state.upgrade() else { return };
                st.sessions.sweep(&st.live());
            }
        }
    }
}

/// The session body of `GET /api/v1/session` and the sign-in's 201.
pub fn session_json(user: &Principal, csrf: Option<&str>, live: &Live) -> serde_json::Value {
    let purposes = |p: &Purposes| -> serde_json::Value {
        match p {
            Purposes::Any => json!("any"),
            Purposes::None => json!([]),
            Purposes::Only(set) => json!(set),
        }
    };
    // A role with `export` for a purpose may also view for it (roles.rs: `footage`).
    let view = match (&user.perms.view, &user.perms.export) {
        (Purposes::Any, _) | (_, Purposes::Any) => Purposes::Any,
        (Purposes::Only(a), Purposes::Only(b)) => Purposes::Only(a.union(b).cloned().collect()),
        (Purposes::Only(a), Purposes::None) | (Purposes::None, Purposes::Only(a)) => {
            Purposes::Only(a.clone())
        }
        (Purposes::None, Purposes::None) => Purposes::None,
    };
    let permissions: Vec<&str> = PERMISSIONS
        .iter()
        .filter(|(_, p)| user.can(*p))
        .map(|(n, _)| *n)
        .collect();
    json!({
        "user": user.name,
        "role": user.role,
        "sites": user.sites,
        "permissions": permissions,
        "footage": { "view": purposes(&view), "export": purposes(&user.perms.export) },
        "csrf_token": csrf,
        "idle_timeout_secs": live.console.session_idle.as_secs(),
        "timezone": live.console.timezone,
    })
}

/// The `Set-Cookie` value of a new session.
fn set_cookie(id: &str, tls: bool) -> HeaderValue {
    let secure = if tls { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict{secure}"
    ))
    .expect("base64url is a valid header value")
}

/// The `Set-Cookie` value that removes the cookie.
fn clear_cookie(tls: bool) -> HeaderValue {
    let secure = if tls { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{secure}"
    ))
    .expect("a valid header value")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    token: String,
}

/// `POST /api/v1/session`: a bearer token (in the body) for a session cookie.
pub async fn sign_in(State(state): State<Arc<AppState>>, req: Request) -> Response {
    match sign_in_inner(state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn sign_in_inner(state: Arc<AppState>, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let remote = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    let body = super::read_body(&parts.headers, body, SIGN_IN_BODY_LIMIT).await?;
    let form: SignIn = super::holds::parse_json(&body)?;
    let live = state.live();
    let token = form.token.trim();
    let token_hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let user = (!token.is_empty())
        .then(|| live.auth.authenticate(Some(&format!("Bearer {token}"))))
        .flatten()
        .ok_or_else(|| {
            let mut e = ApiError::new(StatusCode::UNAUTHORIZED, "token: not a valid token");
            e.detail = json!({ "field": "token" });
            e
        })?;
    let id = random_token();
    let csrf = random_token();
    let hash = hash_id(&id);
    let tag = tag_of(&hash);
    let user_agent: String = parts
        .headers
        .get(header::USER_AGENT)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_USER_AGENT)
        .collect();
    // The entry first: a session nobody can account for is never handed out.
    let entry = NewEntry {
        sites: user.sites.clone().unwrap_or_default(),
        ..super::entry(
            &user,
            "session.start",
            json!({
                "remote": remote.to_string(),
                "tls": state.sessions.tls(),
                "user_agent": user_agent,
                "session": tag,
            }),
        )
    };
    state.record(entry).await?;
    let evicted = state.sessions.table().insert(
        hash,
        &user.name,
        token_hash,
        csrf.clone(),
        remote,
        Instant::now(),
    );
    state.sessions.report(evicted);
    // A browser that signs in again (another user at a shared PC) leaves no session behind.
    if let Some(old) = cookie(&parts.headers) {
        let replaced = state.sessions.table().remove(&hash_id(old), "replaced");
        state.sessions.report(replaced);
    }
    tracing::info!(session = %tag, user = %user.name, %remote, "console session started");
    let mut resp = (
        StatusCode::CREATED,
        Json(session_json(&user, Some(&csrf), &live)),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&id, state.sessions.tls()));
    Ok(resp)
}

/// `GET /api/v1/session`: who is signed in (cookie or bearer); the CSRF token for a cookie.
pub async fn get(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let user = super::authenticate(&state, &headers)?;
    let live = state.live();
    let csrf =
        uses_cookie(&headers).and_then(|id| state.sessions.csrf_of(id, live.console.session_idle));
    Ok(Json(session_json(&user, csrf.as_deref(), &live)).into_response())
}

/// `DELETE /api/v1/session`: signs out (the cookie's session ends; CSRF checked by
/// [`csrf_guard`]). With a bearer token and no cookie there is nothing to end: 204 as well.
pub async fn sign_out(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let user = super::authenticate(&state, &headers)?;
    if let Some(id) = cookie(&headers) {
        let hash = hash_id(id);
        let ended = {
            let mut t = state.sessions.table();
            let mine = t
                .peek(&hash, Instant::now(), Duration::MAX)
                .map(|(u, _, _)| u);
            if mine.as_deref() == Some(user.name.as_str()) {
                t.remove(&hash, "signed out")
            } else {
                None
            }
        };
        if let Some(e) = ended {
            tracing::info!(session = %e.tag, user = %e.user, "console session signed out");
            let entry = NewEntry {
                sites: user.sites.clone().unwrap_or_default(),
                ..super::entry(
                    &user,
                    "session.end",
                    json!({ "why": e.why, "session": e.tag }),
                )
            };
            state.record(entry).await?;
        }
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, clear_cookie(state.sessions.tls()));
    Ok(resp)
}

/// This daemon's own origin as the browser names it: the scheme and the `Host` header.
fn own_origin(headers: &HeaderMap, tls: bool) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    Some(format!("{}://{host}", if tls { "https" } else { "http" }))
}

/// Whether the request's `Origin` (if any) is this daemon's own.
fn origin_ok(headers: &HeaderMap, tls: bool) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let own = own_origin(headers, tls);
    origin
        .to_str()
        .ok()
        .zip(own)
        .is_some_and(|(o, own)| o.eq_ignore_ascii_case(&own))
}

/// Whether the browser's `Sec-Fetch-Site` (if it sent one) says the request comes from this
/// daemon's own pages (`same-origin`) or from the user (`none`: a typed address, a bookmark).
fn fetch_site_ok(headers: &HeaderMap) -> bool {
    headers
        .get("sec-fetch-site")
        .is_none_or(|site| matches!(site.as_bytes(), b"same-origin" | b"none"))
}

/// Whether a GET of `uri` is a logged read (a key-tag query, or footage asked for by range
/// rather than by a view or export id): it writes a logbook entry in the user's name.
fn logged_read(uri: &axum::http::Uri) -> bool {
    let path = uri.path();
    if path == "/api/v1/keytags/events" {
        return true;
    }
    if !path.starts_with("/api/v1/cameras/") {
        return false;
    }
    let kind = if path.ends_with("/view.mp4") {
        crate::roles::Footage::View
    } else if path.ends_with("/export.mp4") {
        crate::roles::Footage::Export
    } else {
        return false;
    };
    // Exactly as the handler decides: an id it will use, or else a logged read.
    super::export::held_id_of(uri.query(), kind).is_none()
}

/// Refuses (403 "missing or wrong CSRF token") a cookie-authenticated request that comes with a
/// foreign `Origin`, or whose method is not GET/HEAD and lacks the session's `X-CSRF-Token`;
/// and a sign-in from a foreign `Origin`. Bearer requests pass untouched; so do requests whose
/// cookie names no live session (the handler answers 401). Runs before every handler.
pub async fn csrf_guard(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let tls = state.sessions.tls();
    let headers = req.headers();
    let refuse = || ApiError::new(StatusCode::FORBIDDEN, CSRF_REFUSED).into_response();
    let sign_in = req.method() == Method::POST && req.uri().path() == "/api/v1/session";
    if sign_in {
        if !origin_ok(headers, tls) || !fetch_site_ok(headers) {
            return refuse();
        }
        return next.run(req).await;
    }
    let Some(id) = uses_cookie(headers) else {
        return next.run(req).await;
    };
    let Some(csrf) = state
        .sessions
        .csrf_of(id, state.live().console.session_idle)
    else {
        return next.run(req).await;
    };
    if !origin_ok(headers, tls) {
        return refuse();
    }
    // A browser names where a request comes from: an API request that another site's page
    // (even a same-site one: another port, a sibling host) made is refused, whatever it is.
    if req.uri().path().starts_with("/api/") && !fetch_site_ok(headers) {
        return refuse();
    }
    // A GET that writes a logbook entry and hands out data is not "safe": it needs the token
    // too, so that no `<img>`/`<video>`/link of another page can fetch footage or key tags in
    // the user's name (browsers without `Sec-Fetch-Site` included). A GET by a view or export
    // id needs none (the id is the secret); an unknown id there is answered and logged as a
    // refusal, within the refusal budget.
    let safe = matches!(*req.method(), Method::GET | Method::HEAD) && !logged_read(req.uri());
    if !safe {
        let given = headers
            .get(CSRF_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        let given = std::str::from_utf8(given).unwrap_or_default();
        if !csrf_matches(&csrf, given) {
            return refuse();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(60);
    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn h(i: u32) -> [u8; 32] {
        hash_id(&format!("id-{i}"))
    }

    #[test]
    fn gets_that_write_an_entry_are_not_safe() {
        let logged = |u: &str| logged_read(&u.parse::<axum::http::Uri>().unwrap());
        assert!(logged("/api/v1/keytags/events?tag=1&purpose=tag-check"));
        assert!(logged("/api/v1/cameras/a/view.mp4?from=x&to=y&reason=r"));
        assert!(logged("/api/v1/cameras/a/export.mp4?reason=r"));
        // The id of the other kind does not count: the handler would log it.
        assert!(logged("/api/v1/cameras/a/view.mp4?export=abc"));
        assert!(logged("/api/v1/cameras/a/export.mp4?view=abc"));
        assert!(!logged("/api/v1/cameras/a/view.mp4?view=abc"));
        assert!(!logged("/api/v1/cameras/a/export.mp4?export=abc"));
        assert!(!logged("/api/v1/cameras"));
        assert!(!logged("/api/v1/cameras/a/recordings?from=x&to=y"));
        assert!(!logged("/api/v1/exports/abc"));
    }

    #[test]
    fn a_session_lives_while_used_and_ends_once_when_idle() {
        let mut t = Table::default();
        let t0 = Instant::now();
        assert!(t
            .insert(h(1), "ann", [0; 32], "c1".into(), IP, t0)
            .is_empty());
        // Use just before the timeout resets the clock.
        let t1 = t0 + IDLE - Duration::from_millis(1);
        assert_eq!(
            t.touch(&h(1), t1, IDLE),
            Lookup::Live {
                user: "ann".into(),
                csrf: "c1".into(),
                token: [0; 32],
            }
        );
        assert!(t
            .peek(&h(1), t1 + IDLE - Duration::from_millis(1), IDLE)
            .is_some());
        assert!(t.peek(&h(1), t1 + IDLE, IDLE).is_none());
        match t.touch(&h(1), t1 + IDLE, IDLE) {
            Lookup::Expired(e) => {
                assert_eq!((e.user.as_str(), e.why), ("ann", "idle"));
                assert_eq!(e.tag, tag_of(&h(1)));
                assert_eq!(e.tag.len(), 16);
            }
            other => panic!("{other:?}"),
        }
        // Noticed once only: the sweep and a second use find nothing.
        assert_eq!(t.touch(&h(1), t1 + IDLE, IDLE), Lookup::Unknown);
        assert!(t.sweep(t1 + 2 * IDLE, IDLE, |_, _| None).is_empty());
        assert!(t.is_empty());
    }

    #[test]
    fn the_sweep_ends_idle_sessions_and_those_of_removed_users() {
        let mut t = Table::default();
        let t0 = Instant::now();
        t.insert(h(1), "ann", [0; 32], "a".into(), IP, t0);
        t.insert(h(2), "bob", [0; 32], "b".into(), IP, t0 + IDLE / 2);
        t.insert(h(3), "cas", [0; 32], "c".into(), IP, t0 + IDLE / 2);
        let mut ended = t.sweep(t0 + IDLE, IDLE, |u, _| {
            (u == "cas").then_some("user removed")
        });
        ended.sort_by(|a, b| a.user.cmp(&b.user));
        let got: Vec<_> = ended.iter().map(|e| (e.user.as_str(), e.why)).collect();
        assert_eq!(got, [("ann", "idle"), ("cas", "user removed")]);
        assert_eq!(t.len(), 1);
        assert!(t.peek(&h(2), t0 + IDLE, IDLE).is_some());
    }

    #[test]
    fn the_oldest_session_of_a_user_is_evicted_past_the_limit() {
        let mut t = Table::default();
        let t0 = Instant::now();
        for i in 0..MAX_PER_USER as u32 {
            assert!(t
                .insert(h(i), "ann", [0; 32], "c".into(), IP, t0)
                .is_empty());
        }
        t.insert(h(1000), "bob", [0; 32], "c".into(), IP, t0);
        // Using the oldest does not save it: eviction goes by age.
        t.touch(&h(0), t0 + Duration::from_secs(1), IDLE);
        let ended = t.insert(
            h(99),
            "ann",
            [0; 32],
            "c".into(),
            IP,
            t0 + Duration::from_secs(2),
        );
        assert_eq!(ended.len(), 1);
        assert_eq!(
            (ended[0].tag.clone(), ended[0].why),
            (tag_of(&h(0)), "evicted")
        );
        assert_eq!(t.len(), MAX_PER_USER + 1);
        assert!(t.peek(&h(1000), t0, IDLE).is_some());
        assert_eq!(
            t.age(&h(99), t0 + Duration::from_secs(3)),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn the_oldest_session_of_all_is_evicted_past_the_total_limit() {
        let mut t = Table::default();
        let t0 = Instant::now();
        for i in 0..MAX_SESSIONS as u32 {
            t.insert(
                h(i),
                &format!("user-{}", i % 1000),
                [0; 32],
                "c".into(),
                IP,
                t0,
            );
        }
        let ended = t.insert(h(1_000_000), "new", [0; 32], "c".into(), IP, t0);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].tag, tag_of(&h(0)));
        assert_eq!(t.len(), MAX_SESSIONS);
    }

    #[test]
    fn csrf_tokens_compare_exactly() {
        let a = random_token();
        let b = random_token();
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert!(csrf_matches(&a, &a.clone()));
        assert!(!csrf_matches(&a, &b));
        assert!(!csrf_matches(&a, &a[..42]));
        assert!(!csrf_matches(&a, ""));
        assert!(!csrf_matches("", ""));
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut hm = HeaderMap::new();
        hm.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; holdfast_session=xyz; b=2"),
        );
        assert_eq!(cookie(&hm), Some("xyz"));
        assert_eq!(uses_cookie(&hm), Some("xyz"));
        hm.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        assert_eq!(uses_cookie(&hm), None);
        let mut hm = HeaderMap::new();
        hm.insert(
            header::COOKIE,
            HeaderValue::from_static("holdfast_session="),
        );
        assert_eq!(cookie(&hm), None);
    }

    #[test]
    fn origins_are_compared_with_scheme_and_host() {
        let mut hm = HeaderMap::new();
        hm.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8480"));
        assert!(origin_ok(&hm, false));
        hm.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8480"),
        );
        assert!(origin_ok(&hm, false));
        assert!(!origin_ok(&hm, true));
        hm.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!origin_ok(&hm, false));
        hm.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!origin_ok(&hm, false));
    }
}
