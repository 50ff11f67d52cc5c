//! The HTTP API (axum): health, metrics, cameras and their recordings, holds and erasures.
//!
//! Every `/api/v1` route works in one order: authenticate (401 without a valid bearer token),
//! check the role's permission (403), and only then read and parse the query and body (413, 400),
//! so nobody learns anything about a route's parameters without a token. Errors are
//! `{"error": "...", "detail": ...}`. Site scope is applied everywhere: another site's camera is
//! answered exactly like a camera that does not exist (404 in a path, 400 "unknown camera" in a
//! body), holds and logbook entries of other sites are not shown. Request counts go to
//! `holdfast_http_requests_total` by route pattern, never by raw path.

pub mod auth;
pub mod clock;
pub mod console;
pub mod export;
pub mod footage_ids;
pub mod holds;
pub mod keytags;
pub mod limits;
pub mod logbook;
pub mod range;
pub mod server;
pub mod session;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{MatchedPath, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use self::auth::{Authenticator, Permission, Principal};
use crate::ingest::CameraStatus;
use crate::logbook::{HashedEntry, Logbook, NewEntry};
use crate::metrics::{HttpLabels, Metrics};
use crate::retention::holds::Holds;
use crate::retention::intervals::{Interval, IntervalSet};
use crate::retention::sweeper::{retention_gauges, SweeperConfig};
use crate::store::index::IndexBatch;
use crate::store::writer::WriterHandle;
use crate::store::Store;
use crate::time::Time90k;

/// What the handlers share.
pub struct AppState {
    /// The store (index reads).
    pub store: Arc<Store>,
    /// The writer (health).
    pub writer: WriterHandle,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Everything derived from the config that a reload (SIGHUP) may change; handlers take one
    /// snapshot per use with [`AppState::live`].
    pub live: arc_swap::ArcSwap<Live>,
    /// Incident holds.
    pub holds: Arc<Holds>,
    /// The logbook.
    pub logbook: Arc<Logbook>,
    /// The trusted clock (retention and hold review dates are judged by it).
    pub clock: Arc<crate::wallclock::TrustedClock>,
    /// Beats while the HTTP server makes progress (`api::server`); the watchdog reads it.
    pub http_progress: crate::service::Heartbeat,
    /// Console sessions (`api::session`).
    pub sessions: session::Sessions,
}

/// The parts of [`AppState`] that come from the config and are swapped whole by a reload
/// (`crate::daemon`): a request sees either the old or the new set, never a mix.
pub struct Live {
    /// Users.
    pub auth: Authenticator,
    /// Cameras, in config order.
    pub cameras: Vec<Arc<CameraStatus>>,
    /// Whether `/metrics` needs a token.
    pub metrics_require_auth: bool,
    /// Camera ids per site.
    pub sites: HashMap<String, Vec<String>>,
    /// Retention settings (for the retention gauges at scrape time).
    pub retention: SweeperConfig,
    /// How far past now a hold's `to` may reach (`holds.max_future`).
    pub hold_max_future: Duration,
    /// Default review period of a hold, per camera (its policy's `hold_review`).
    pub hold_review: HashMap<String, Duration>,
    /// The longest range of a key-tag query, per purpose (`keytags.max_range`).
    pub keytag_max_range: BTreeMap<String, Duration>,
    /// `[console]`: time zone and session idle timeout.
    pub console: crate::config::ConsoleSettings,
}

impl Live {
    /// The live settings of `config`, with the status of each configured camera (in config
    /// order) and the sweeper settings derived from the same config.
    pub fn new(
        config: &crate::config::Config,
        cameras: Vec<Arc<CameraStatus>>,
        retention: SweeperConfig,
    ) -> Live {
        Live {
            auth: Authenticator::new(&config.users, &crate::roles::RoleTable::new(&config.roles)),
            cameras,
            metrics_require_auth: config.http.metrics_require_auth,
            sites: config
                .sites
                .iter()
                .map(|s| {
                    let cams = config
                        .cameras
                        .iter()
                        .filter(|c| c.site == s.id)
                        .map(|c| c.id.clone())
                        .collect();
                    (s.id.clone(), cams)
                })
                .collect(),
            retention,
            hold_max_future: config.holds.max_future,
            hold_review: config
                .cameras
                .iter()
                .map(|c| {
                    let review = config
                        .policies
                        .get(config.camera_policy(c))
                        .map_or(Duration::from_secs(14 * 86_400), |p| p.hold_review);
                    (c.id.clone(), review)
                })
                .collect(),
            keytag_max_range: config.keytags.max_range.clone(),
            console: config.console.clone(),
        }
    }
}

impl AppState {
    /// Appends a logbook entry (synced) off the async threads; only then may data follow.
    /// Free-text fields are capped first (the handlers refuse overlong input with a 400; this is
    /// the backstop), so no request can make an entry, or a logbook listing, huge.
    pub async fn record(self: &Arc<Self>, e: NewEntry) -> Result<HashedEntry, ApiError> {
        let st = self.clone();
        tokio::task::spawn_blocking(move || st.record_with(e, IndexBatch::default()))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)
    }

    /// Appends a logbook entry (blocking) in the same batch as `with`: the change it records and
    /// the entry become durable together or not at all. Long fields are cut as in
    /// [`AppState::record`].
    pub fn record_with(
        &self,
        mut e: NewEntry,
        with: IndexBatch,
    ) -> Result<HashedEntry, crate::logbook::LogbookError> {
        let cap = |v: &mut Option<String>, n: usize| {
            if let Some(s) = v.as_mut().filter(|s| s.len() > n) {
                *s = export::truncate(s, n);
            }
        };
        cap(&mut e.reason, 2000);
        cap(&mut e.purpose, 64);
        cap(&mut e.recipient, 256);
        cap(&mut e.reference, 256);
        cap(&mut e.text, 4000);
        let entry = self.logbook.append_with(self.store.index(), e, with)?;
        self.metrics.logbook_entries.inc();
        Ok(entry)
    }
}

impl AppState {
    /// The current live settings (a snapshot: a reload meanwhile does not change it).
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// The site of a configured camera.
    pub fn camera_site(&self, camera: &str) -> Option<String> {
        self.live
            .load()
            .cameras
            .iter()
            .find(|c| c.id == camera)
            .map(|c| c.site.clone())
    }

    /// The sites of some cameras, sorted and without repeats (unknown cameras have none).
    pub fn sites_of<'a>(&self, cameras: impl IntoIterator<Item = &'a String>) -> Vec<String> {
        let mut v: Vec<String> = cameras
            .into_iter()
            .filter_map(|c| self.camera_site(c))
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// Whether a user may see a logbook entry: `*` users see every entry; a user scoped to some
/// sites sees an entry only when it belongs to at least one site and all of its sites are theirs.
pub fn entry_visible(user: &Principal, sites: &[String]) -> bool {
    user.sites.is_none() || (!sites.is_empty() && sites.iter().all(|s| user.covers_site(s)))
}

/// The path parameter of a route (`{id}`, `{seq}`), percent-decoded, invalid UTF-8 replaced.
/// Unlike axum's `Path` it never rejects, so a malformed parameter cannot answer before
/// authentication does: handlers authenticate first and then judge the value.
#[derive(Debug, Clone)]
pub struct Param(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Param {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        let pattern = parts
            .extensions
            .get::<MatchedPath>()
            .map(|m| m.as_str().to_owned())
            .unwrap_or_default();
        let value = pattern
            .split('/')
            .position(|seg| seg.starts_with('{'))
            .and_then(|i| parts.uri.path().split('/').nth(i))
            .map(|raw| {
                percent_encoding::percent_decode_str(raw)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .unwrap_or_default();
        Ok(Param(value))
    }
}

/// Reads a request body of at most `limit` bytes: 413 (JSON, with the limit) when it is larger.
/// Called after authentication, so nobody without a token makes the daemon buffer a body.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_long = || {
        let mut err = ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body: larger than the limit of {limit} bytes"),
        );
        err.detail = json!({ "field": "body", "limit_bytes": limit });
        err
    };
    // A declared length over the limit is refused before a byte of the body is read.
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_long());
    }
    match axum::body::to_bytes(body, limit).await {
        Ok(b) => Ok(b),
        Err(e) => {
            let over = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            if over {
                Err(too_long())
            } else {
                Err(ApiError::bad_field("body", "could not be read"))
            }
        }
    }
}

/// Parses a query string (after authentication); errors name the parameter.
pub fn parse_query<T: DeserializeOwned>(raw: Option<&str>) -> Result<T, ApiError> {
    let raw = raw.unwrap_or("");
    let de = serde_urlencoded::Deserializer::new(url::form_urlencoded::parse(raw.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.inner().to_string();
        // serde names a duplicate or missing field in its message, at the parent's path.
        let field = match (path.as_str(), msg.split('`').nth(1)) {
            ("." | "", Some(f)) if !f.is_empty() => f.to_owned(),
            ("." | "", _) => "query".to_owned(),
            (p, _) => p.to_owned(),
        };
        let field: String = field.chars().take(64).collect();
        ApiError::bad_field(&field, msg.chars().take(200).collect::<String>())
    })
}

/// Longest text of a reason, a finding or a note.
pub const MAX_REASON: usize = 2000;
/// Longest reference, requester or recipient.
pub const MAX_REFERENCE: usize = 256;

/// 400 when a text field is longer than `max` bytes.
pub fn check_len(field: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.len() > max {
        return Err(ApiError::bad_field(
            field,
            format!("is longer than {max} bytes"),
        ));
    }
    Ok(())
}

/// Logs a refused look (an export, view or key-tag query that was refused) with what was asked,
/// and answers with `err`, marked so that the refusal middleware does not log it again. Past the
/// user's budget the refusal is answered 429 instead (which the middleware logs coalesced).
pub async fn log_refusal(
    state: &Arc<AppState>,
    user: &Principal,
    mut e: NewEntry,
    err: ApiError,
) -> Response {
    if !refusal_budget(&user.name) {
        return refusals_exhausted();
    }
    e.text = Some(export::truncate(err.message(), 512));
    if let Err(le) = state.record(e).await {
        tracing::error!(error = ?le, "could not log a refused request");
        return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "logbook unavailable")
            .into_response();
    }
    let mut resp = err.into_response();
    resp.extensions_mut().insert(RefusalLogged);
    resp
}

/// Refused looks a user may have logged one by one per minute; past that, further refusals are
/// answered 429, which the refusal middleware logs coalesced. A valid token cannot be used to
/// write synced entries without bound.
pub const REFUSAL_BUDGET_PER_MINUTE: u32 = 30;

/// Whether `user` may have another refusal logged individually this minute (and counts it).
fn refusal_budget(user: &str) -> bool {
    use std::sync::{LazyLock, Mutex};
    use std::time::Instant;
    static TABLE: LazyLock<Mutex<HashMap<String, (Instant, u32)>>> =
        LazyLock::new(|| Mutex::new(HashMap::new()));
    let mut t = TABLE.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    if t.len() >= 4096 {
        t.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
    }
    let slot = t.entry(user.to_owned()).or_insert((now, 0));
    if now.duration_since(slot.0) >= Duration::from_secs(60) {
        *slot = (now, 0);
    }
    slot.1 += 1;
    slot.1 <= REFUSAL_BUDGET_PER_MINUTE
}

/// The answer to a refusal past the user's budget.
fn refusals_exhausted() -> Response {
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too many refused requests from this user; try again in a minute",
    );
    e.detail = json!({ "retry_after_secs": 60 });
    let mut r = e.into_response();
    r.headers_mut()
        .insert(axum::http::header::RETRY_AFTER, 60u64.into());
    r
}

/// A logbook entry by `user` for `action` on `object`; the caller fills in the rest.
pub fn entry(user: &Principal, action: &str, object: serde_json::Value) -> NewEntry {
    NewEntry {
        user: user.name.clone(),
        role: user.role.clone(),
        action: action.to_owned(),
        object,
        ..Default::default()
    }
}

/// An API error: status, a short message and optional detail.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: String,
    detail: serde_json::Value,
}

impl ApiError {
    /// An error with a status and message.
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            detail: serde_json::Value::Null,
        }
    }

    /// 400 naming the field that was wrong.
    pub fn bad_field(field: &str, message: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            format!("{field}: {}", message.into()),
        );
        e.detail = json!({ "field": field });
        e
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.error
    }

    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({ "error": self.error, "detail": self.detail })),
        )
            .into_response()
    }
}

/// Builds the router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/cameras", get(cameras))
        .route("/api/v1/cameras/{id}/recordings", get(recordings))
        .route("/api/v1/holds", post(holds::place).get(holds::list))
        .route("/api/v1/holds/{id}", get(holds::get_one))
        .route("/api/v1/holds/{id}/release", post(holds::release))
        .route("/api/v1/holds/{id}/extend", post(holds::extend))
        .route("/api/v1/erasures", post(holds::erasure))
        .route("/api/v1/cameras/{id}/export.mp4", get(export::export))
        .route("/api/v1/cameras/{id}/view.mp4", get(export::view))
        .route("/api/v1/cameras/{id}/views", post(export::post_view))
        .route("/api/v1/cameras/{id}/exports", post(export::post_export))
        .route("/api/v1/exports/{id}", get(export::get_export))
        .route(
            "/api/v1/keytags/events",
            post(keytags::submit).get(keytags::query),
        )
        .route("/api/v1/logbook", get(logbook::list))
        .route("/api/v1/logbook/verify", get(logbook::verify))
        .route("/api/v1/logbook/head", get(logbook::head))
        .route("/api/v1/logbook/{seq}", get(logbook::get_one))
        .route("/api/v1/logbook/{seq}/finding", post(logbook::finding))
        .route("/api/v1/logbook/{seq}/signoff", post(logbook::signoff))
        .route("/api/v1/clock/accept", post(clock::accept))
        .route(
            "/api/v1/session",
            post(session::sign_in)
                .get(session::get)
                .delete(session::sign_out),
        )
        .route("/", get(console::index))
        .route("/console/{*path}", get(console::asset))
        .fallback(no_such_route)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            session::csrf_guard,
        ))
        .layer(axum::middleware::from_fn(limit_bodies))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::map_response(json_errors))
        .layer(axum::middleware::map_response(no_store))
        .with_state(state)
}

/// Largest JSON request body (holds, erasures, findings, sign-offs), in bytes.
pub const JSON_BODY_LIMIT: usize = 64 * 1024;
/// Largest key-tag batch (`POST /api/v1/keytags/events`), in bytes.
pub const KEYTAG_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// Marks a response whose refusal (401/403) the handler already wrote to the logbook itself, so
/// the refusal middleware does not log it again. Insert it into the response's extensions.
#[derive(Clone, Copy, Debug)]
pub struct RefusalLogged;

/// Counts every request; answers 429 to a source that keeps failing authentication (unless the
/// request carries a valid token); writes refused requests (401, 403, 429) to the logbook
/// coalesced per source, route and status (`api::limits`). The token itself is never logged; an
/// unknown one shows as user `-`.
async fn count_requests(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    use self::limits::{Limits, Refusal};
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = req.method().to_string();
    let path = limits::truncate_utf8(req.uri().path(), limits::MAX_PATH_BYTES).to_owned();
    // A header that is not text still decides (as in `authenticate`): it is no valid token.
    let authorization = req
        .headers()
        .get("authorization")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    let cookie = session::cookie(req.headers()).map(str::to_owned);
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    // Without the serving loop's tables (a router used on its own), every refusal is logged.
    let limits = req
        .extensions()
        .get::<Arc<Limits>>()
        .cloned()
        .unwrap_or_else(|| Arc::new(Limits::new()));
    let throttled = limits
        .throttled(peer)
        .filter(|_| requester(&state, authorization.as_deref(), cookie.as_deref()).is_none());
    let mut resp = match throttled {
        Some(wait) => {
            let secs = wait.as_secs().max(1);
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed authentications from this address; try again later",
            );
            e.detail = json!({ "retry_after_secs": secs });
            let mut r = e.into_response();
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
            r
        }
        None => next.run(req).await,
    };
    let status = resp.status();
    let refused = matches!(
        status,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS
    );
    if refused && resp.extensions().get::<RefusalLogged>().is_none() {
        if status == StatusCode::UNAUTHORIZED {
            limits.auth_failed(peer);
        }
        let user = (status != StatusCode::UNAUTHORIZED)
            .then(|| requester(&state, authorization.as_deref(), cookie.as_deref()))
            .flatten();
        let entries = limits.refused(Refusal {
            peer,
            method,
            path,
            route: route.clone(),
            status: status.as_u16(),
            user: user.map(|u| (u.name.clone(), u.role.clone())),
        });
        // In a task of its own: a client that hangs up cannot cut the writing short (the
        // entries have left the coalescing table).
        let st = state.clone();
        let written = tokio::spawn(async move {
            for e in entries {
                st.record(e).await?;
            }
            Ok::<(), ApiError>(())
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::error!(outcome = ?written, "could not log a refused request");
            resp = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "logbook unavailable")
                .into_response();
        }
    }
    state
        .metrics
        .http_requests
        .get_or_create(&HttpLabels {
            route,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}

/// 404 for every path no route matches.
async fn no_such_route(uri: axum::http::Uri) -> ApiError {
    let mut e = ApiError::new(StatusCode::NOT_FOUND, "no such route");
    e.detail = json!({ "path": limits::truncate_utf8(uri.path(), limits::MAX_PATH_BYTES) });
    e
}

fn body_too_large(limit: usize) -> Response {
    let mut e = ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is larger than {limit} bytes"),
    );
    e.detail = json!({ "limit_bytes": limit });
    e.into_response()
}

/// Request body limits: [`KEYTAG_BODY_LIMIT`] for key-tag batches, [`JSON_BODY_LIMIT`] for
/// everything else, as a backstop under the handlers' own `read_body`. A body is read only after
/// authentication, so a too-long body answers 413 (with `limit_bytes`) only to someone who may
/// send it; everyone else gets 401/403 first and the body is never read.
async fn limit_bodies(req: Request, next: Next) -> Response {
    let limit = match req.extensions().get::<MatchedPath>() {
        Some(m) if m.as_str() == "/api/v1/keytags/events" => KEYTAG_BODY_LIMIT,
        _ => JSON_BODY_LIMIT,
    };
    let req = req.map(|b| axum::body::Body::new(http_body_util::Limited::new(b, limit)));
    let resp = next.run(req).await;
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json(&resp) {
        return body_too_large(limit);
    }
    resp
}

/// `Cache-Control: no-store` on every JSON answer (API data is never kept by a browser or a
/// proxy); answers that set their own `Cache-Control` (the console's files) keep it.
async fn no_store(mut resp: Response) -> Response {
    if is_json(&resp)
        && !resp
            .headers()
            .contains_key(axum::http::header::CACHE_CONTROL)
    {
        resp.headers_mut().insert(
            axum::http::header::CACHE_CONTROL,
            axum::http::HeaderValue::from_static("no-store"),
        );
    }
    resp
}

fn is_json(resp: &Response) -> bool {
    resp.headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Rewrites every error response that is not JSON yet (axum's plain-text extractor rejections,
/// 405) into `{"error": ..., "detail": null}`, keeping status and headers.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&resp) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let reason = status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase();
    // (A 405's `Allow` header is added by axum after this layer; it stays a header.)
    let (error, detail) = if text.is_empty() {
        (reason, serde_json::Value::Null)
    } else {
        (text, serde_json::Value::Null)
    };
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts.headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    let body =
        serde_json::to_vec(&json!({ "error": error, "detail": detail })).expect("JSON serializes");
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// Authenticates only (401 without a valid token): an `Authorization: Bearer` header if there
/// is one (a wrong one is 401 even with a good cookie), else the console's session cookie,
/// whose user is looked up by name in the current config (`api::session`).
pub fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Arc<Principal>, ApiError> {
    let live = state.live();
    if let Some(value) = headers.get("authorization") {
        return live.auth.authenticate(value.to_str().ok()).ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "a valid bearer token is required")
        });
    }
    match session::cookie(headers) {
        Some(id) => state.sessions.authenticate(&live, id),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required",
        )),
    }
}

/// Who a request is from, without using a session (for the refusal middleware): the bearer
/// token's user, else the user of a live session cookie.
fn requester(
    state: &AppState,
    authorization: Option<&str>,
    cookie: Option<&str>,
) -> Option<Arc<Principal>> {
    let live = state.live();
    match (authorization, cookie) {
        (Some(a), _) => live.auth.authenticate(Some(a)),
        (None, Some(id)) => state.sessions.user_of(&live, id),
        (None, None) => None,
    }
}

/// Authenticates and checks a permission.
pub fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    p: Permission,
) -> Result<Arc<Principal>, ApiError> {
    let user = authenticate(state, headers)?;
    if !user.can(p) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("role {} may not do this", user.role),
        ));
    }
    Ok(user)
}

/// Authenticates and checks that the user has at least one of the permissions.
pub fn authorize_any(
    state: &AppState,
    headers: &HeaderMap,
    any: &[Permission],
) -> Result<Arc<Principal>, ApiError> {
    let user = authenticate(state, headers)?;
    if !any.iter().any(|p| user.can(*p)) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("role {} may not do this", user.role),
        ));
    }
    Ok(user)
}

/// `GET /healthz`: without a token only `{"status"}` (200 ok, 503 failing); with a token of a
/// user who may see camera status also the parts and the cameras of the user's sites.
async fn healthz(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    // A dead writer thread is 503 at once (the daemon exits a few seconds later).
    let writer = state.writer.is_healthy();
    // A point read: cheap enough for anyone without a token to ask often.
    let index = state.store.index().logbook_head().is_ok();
    let storage_full = state.writer.is_paused();
    // Every write failing for a while (segments keep coming, none is stored): not healthy.
    let writes_failing = state.writer.writes_failing();
    let status = if writer && index && !storage_full && writes_failing.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = if status == StatusCode::OK {
        "ok"
    } else {
        "failing"
    };
    let user = authenticate(&state, &headers)
        .ok()
        .filter(|u| u.can(Permission::CamerasStatus));
    let Some(user) = user else {
        return (status, Json(json!({ "status": word }))).into_response();
    };
    let reclaim = state.store.reclaim_status();
    let missing = state.store.missing_files();
    let live = state.live();
    let cameras: BTreeMap<&str, _> = live
        .cameras
        .iter()
        .filter(|c| user.covers_site(&c.site))
        .map(|c| (c.id.as_str(), c.state()))
        .collect();
    (
        status,
        Json(json!({
            "status": word,
            "writer": if writer { "ok" } else { "failing" },
            "writes": writes_failing.as_deref().unwrap_or("ok"),
            "index": if index { "ok" } else { "failing" },
            "storage": if storage_full { "full: only pinned footage left, new video refused" } else { "ok" },
            "cameras": cameras,
            "clock": state.clock.status(),
            "reclaim": {
                "pending_records": reclaim.pending_records,
                "pending_bytes": reclaim.pending_bytes,
                "last_error": reclaim.last_error,
            },
            "missing_files": {
                "files": missing.files.len(),
                "held_entries": missing.files.iter().map(|f| f.held.len()).sum::<usize>(),
                "paths": missing.files.iter().take(20).map(|f| f.path.display().to_string()).collect::<Vec<_>>(),
            },
        })),
    )
        .into_response()
}

async fn metrics(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if state.live().metrics_require_auth {
        let user = authorize(&state, &headers, Permission::CamerasStatus)?;
        // The exposition names every camera of every site: for users of every site only.
        if user.sites.is_some() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "the metrics cover every site; they are for users of every site",
            ));
        }
    }
    update_camera_ages(&state);
    let st = state.clone();
    tokio::task::spawn_blocking(move || {
        retention_gauges(
            &st.store,
            &st.holds,
            &st.live().retention,
            &st.metrics,
            st.clock.retention_now(),
        )
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Ok((
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.encode(),
    )
        .into_response())
}

fn update_camera_ages(state: &AppState) {
    let now = state.clock.now();
    for c in &state.live().cameras {
        // A camera that never delivered has no age (its `holdfast_camera_up` is 0).
        let Some(last) = c.last_frame_at() else {
            continue;
        };
        let age = (now.0 - last.0) as f64 / crate::time::TICKS_PER_SEC as f64;
        state
            .metrics
            .camera_last_frame_age
            .get_or_create(&crate::metrics::CameraLabel {
                camera: c.id.clone(),
            })
            .set(age.max(0.0));
    }
}

fn camera_json(c: &CameraStatus, metrics: &Metrics) -> serde_json::Value {
    let label = crate::metrics::CameraLabel {
        camera: c.id.clone(),
    };
    let reconnects = metrics.camera_reconnects.get_or_create(&label).get();
    json!({
        "id": c.id,
        "site": c.site,
        "state": c.state(),
        "last_frame_at": c.last_frame_at().map(|t| t.to_rfc3339()),
        "last_error": c.last_error(),
        "reconnects": reconnects,
    })
}

async fn cameras(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let user = authorize(&state, &headers, Permission::CamerasStatus)?;
    let list: Vec<_> = state
        .live()
        .cameras
        .iter()
        .filter(|c| user.covers_site(&c.site))
        .map(|c| camera_json(c, &state.metrics))
        .collect();
    Ok(Json(list).into_response())
}

/// A camera the user may see; 404 otherwise, the same for another site's camera as for one that
/// does not exist (ids cannot be enumerated across sites).
pub fn camera_in_scope(
    state: &AppState,
    user: &Principal,
    id: &str,
) -> Result<Arc<CameraStatus>, ApiError> {
    state
        .live()
        .cameras
        .iter()
        .find(|c| c.id == id && user.covers_site(&c.site))
        .cloned()
        .ok_or_else(|| no_camera(id))
}

/// The answer for a camera that does not exist or is not the user's.
pub fn no_camera(id: &str) -> ApiError {
    let mut shown: String = id.chars().take(64).collect();
    if shown.len() < id.len() {
        shown.push('…');
    }
    let mut e = ApiError::new(StatusCode::NOT_FOUND, format!("no camera {shown:?}"));
    e.detail = json!({ "field": "camera" });
    e
}

/// A `from`/`to` query.
#[derive(Deserialize)]
pub struct RangeQuery {
    from: Option<String>,
    to: Option<String>,
}

/// Parses the `from` and `to` of a range query (RFC 3339 with offset), checking from < to.
pub fn parse_range(from: Option<&str>, to: Option<&str>) -> Result<(Time90k, Time90k), ApiError> {
    let parse = |field: &str, v: Option<&str>| -> Result<Time90k, ApiError> {
        let v = v.ok_or_else(|| ApiError::bad_field(field, "is required"))?;
        Time90k::parse_rfc3339(v).map_err(|e| ApiError::bad_field(field, e))
    };
    let from = parse("from", from)?;
    let to = parse("to", to)?;
    if from >= to {
        return Err(ApiError::bad_field("to", "must be after from"));
    }
    Ok((from, to))
}

/// The time before which `camera`'s footage is past its policy's video retention by the trusted
/// clock now (what the sweeper deletes unless held); `None` when the camera has no configured
/// policy.
pub fn retention_edge(state: &AppState, camera: &str) -> Option<Time90k> {
    let live = state.live();
    let r = &live.retention;
    let keep = r.policies.get(r.camera_policies.get(camera)?)?;
    let ticks = i64::try_from(keep.as_secs())
        .ok()?
        .checked_mul(crate::time::TICKS_PER_SEC)?;
    Some(state.clock.retention_now().add_ticks(-ticks))
}

async fn recordings(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Param(id): Param,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let user = authorize(&state, &headers, Permission::CamerasStatus)?;
    camera_in_scope(&state, &user, &id)?;
    let q: RangeQuery = parse_query(raw.as_deref())?;
    let (from, to) = parse_range(q.from.as_deref(), q.to.as_deref())?;
    let st = state.clone();
    let cam = id.clone();
    let segments =
        tokio::task::spawn_blocking(move || st.store.index().camera_segments(&cam, from, to))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
    let intervals = IntervalSet::from_intervals(
        segments
            .iter()
            .map(|s| Interval::new(s.start.max(from).0, s.end().min(to).0)),
    );
    let until = to.min(state.clock.now()).max(from);
    let gaps = intervals.complement_within(Interval::new(from.0, until.0));
    let fmt = |v: &IntervalSet| -> Vec<serde_json::Value> {
        v.intervals()
            .iter()
            .map(|i| json!({ "from": Time90k(i.from).to_rfc3339(), "to": Time90k(i.to).to_rfc3339() }))
            .collect()
    };
    Ok(Json(json!({
        "camera": id,
        "from": from.to_rfc3339(),
        "to": to.to_rfc3339(),
        "intervals": fmt(&intervals),
        "gaps": fmt(&gaps),
        "retention_edge": retention_edge(&state, &id).map(|t| t.to_rfc3339()),
    }))
    .into_response())
}
