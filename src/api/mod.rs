//! The HTTP API (axum): health, metrics, cameras and their recordings, holds and erasures.
//!
//! Every `/api/v1` route authenticates (401 without a valid bearer token), checks the role's
//! permission and the user's site scope (403), and answers errors as
//! `{"error": "...", "detail": ...}`. Request counts go to `holdfast_http_requests_total` by route
//! pattern, never by raw path.

pub mod auth;
pub mod export;
pub mod holds;
pub mod keytags;
pub mod limits;
pub mod logbook;
pub mod server;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use self::auth::{Authenticator, Permission, Principal};
use crate::ingest::CameraStatus;
use crate::logbook::{HashedEntry, Logbook, NewEntry};
use crate::metrics::{HttpLabels, Metrics};
use crate::retention::holds::Holds;
use crate::retention::intervals::{Interval, IntervalSet};
use crate::retention::sweeper::{retention_gauges, SweeperConfig};
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
    /// Users.
    pub auth: Authenticator,
    /// Cameras, in config order.
    pub cameras: Vec<Arc<CameraStatus>>,
    /// Whether `/metrics` needs a token.
    pub metrics_require_auth: bool,
    /// Incident holds.
    pub holds: Arc<Holds>,
    /// Camera ids per site.
    pub sites: HashMap<String, Vec<String>>,
    /// Retention settings (for the retention gauges at scrape time).
    pub retention: SweeperConfig,
    /// The logbook.
    pub logbook: Arc<Logbook>,
}

impl AppState {
    /// Appends a logbook entry (synced) off the async threads; only then may data follow.
    pub async fn record(self: &Arc<Self>, e: NewEntry) -> Result<HashedEntry, ApiError> {
        let st = self.clone();
        let entry = tokio::task::spawn_blocking(move || st.logbook.append(st.store.index(), e))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
        self.metrics.logbook_entries.inc();
        Ok(entry)
    }
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
        .route(
            "/api/v1/keytags/events",
            post(keytags::submit).get(keytags::query),
        )
        .route("/api/v1/logbook", get(logbook::list))
        .route("/api/v1/logbook/verify", get(logbook::verify))
        .route("/api/v1/logbook/{seq}", get(logbook::get_one))
        .route("/api/v1/logbook/{seq}/finding", post(logbook::finding))
        .route("/api/v1/logbook/{seq}/signoff", post(logbook::signoff))
        .fallback(no_such_route)
        .layer(axum::middleware::from_fn(limit_bodies))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::map_response(json_errors))
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
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
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
        .filter(|_| state.auth.authenticate(authorization.as_deref()).is_none());
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
        let user = (status == StatusCode::FORBIDDEN)
            .then(|| state.auth.authenticate(authorization.as_deref()))
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
/// everything else. A declared length above the limit is refused before reading; a longer
/// body fails when the handler reads past the limit. Both answer 413 with `limit_bytes`.
async fn limit_bodies(req: Request, next: Next) -> Response {
    let limit = match req.extensions().get::<MatchedPath>() {
        Some(m) if m.as_str() == "/api/v1/keytags/events" => KEYTAG_BODY_LIMIT,
        _ => JSON_BODY_LIMIT,
    };
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return body_too_large(limit);
    }
    let req = req.map(|b| axum::body::Body::new(http_body_util::Limited::new(b, limit)));
    let resp = next.run(req).await;
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json(&resp) {
        return body_too_large(limit);
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

/// Authenticates only (401 without a valid token).
pub fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Arc<Principal>, ApiError> {
    let value = headers.get("authorization").and_then(|v| v.to_str().ok());
    state
        .auth
        .authenticate(value)
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "a valid bearer token is required"))
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

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    let writer = state.writer.is_healthy();
    let index = state.store.index().buckets(None).is_ok();
    let storage_full = state.writer.is_paused();
    let status = if writer && index && !storage_full {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let cameras: HashMap<&str, _> = state
        .cameras
        .iter()
        .map(|c| (c.id.as_str(), c.state()))
        .collect();
    (
        status,
        Json(json!({
            "status": if status == StatusCode::OK { "ok" } else { "failing" },
            "writer": if writer { "ok" } else { "failing" },
            "index": if index { "ok" } else { "failing" },
            "storage": if storage_full { "full: only pinned footage left, new video refused" } else { "ok" },
            "cameras": cameras,
        })),
    )
        .into_response()
}

async fn metrics(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if state.metrics_require_auth {
        authorize(&state, &headers, Permission::CamerasStatus)?;
    }
    update_camera_ages(&state);
    let st = state.clone();
    tokio::task::spawn_blocking(move || {
        retention_gauges(
            &st.store,
            &st.holds,
            &st.retention,
            &st.metrics,
            Time90k::now(),
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
    let now = Time90k::now();
    for c in &state.cameras {
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

fn camera_json(c: &CameraStatus) -> serde_json::Value {
    json!({
        "id": c.id,
        "site": c.site,
        "state": c.state(),
        "last_frame_at": c.last_frame_at().map(|t| t.to_rfc3339()),
        "last_error": c.last_error(),
    })
}

async fn cameras(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let user = authorize(&state, &headers, Permission::CamerasStatus)?;
    let list: Vec<_> = state
        .cameras
        .iter()
        .filter(|c| user.covers_site(&c.site))
        .map(|c| camera_json(c))
        .collect();
    Ok(Json(list).into_response())
}

/// A camera the user may see, or 404/403.
pub fn camera_in_scope<'a>(
    state: &'a AppState,
    user: &Principal,
    id: &str,
) -> Result<&'a CameraStatus, ApiError> {
    let cam = state
        .cameras
        .iter()
        .find(|c| c.id == id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no camera {id:?}")))?;
    if !user.covers_site(&cam.site) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("camera {id:?} is not in your sites"),
        ));
    }
    Ok(cam)
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

async fn recordings(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<RangeQuery>,
) -> Result<Response, ApiError> {
    let user = authorize(&state, &headers, Permission::CamerasStatus)?;
    camera_in_scope(&state, &user, &id)?;
    let (from, to) = parse_range(q.from.as_deref(), q.to.as_deref())?;
    let segments = state
        .store
        .index()
        .camera_segments(&id, from, to)
        .map_err(ApiError::internal)?;
    let intervals = IntervalSet::from_intervals(
        segments
            .iter()
            .map(|s| Interval::new(s.start.max(from).0, s.end().min(to).0)),
    );
    let until = to.min(Time90k::now()).max(from);
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
    }))
    .into_response())
}
