//! Holds and erasures over HTTP: `/api/v1/holds...` and `POST /api/v1/erasures`.
//!
//! Bodies are JSON; a wrong or missing field is a 400 that names it. Users only see and touch
//! holds and cameras of their own sites. Hold changes answer only once the hold is durable and
//! published to the sweeper.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use super::auth::{Permission, Principal};
use super::{authorize, authorize_any, camera_in_scope, entry, ApiError, AppState};
use crate::retention::erasure::{erase, ErasureError};
use crate::retention::holds::{Hold, HoldError, NewHold};
use crate::time::Time90k;

/// Parses a JSON body; errors name the offending field.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let msg = e.inner().to_string();
        let path = e.path().to_string();
        // serde reports a missing field at the parent's path; name the field itself.
        let field = match msg.split_once("missing field `") {
            Some((_, rest)) => rest.split('`').next().unwrap_or("body").to_owned(),
            None if path == "." || path.is_empty() => "body".to_owned(),
            None => path,
        };
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
        ApiError::bad_field(&field, msg)
    })
}

fn hold_error(e: HoldError) -> ApiError {
    match e {
        HoldError::NotFound(id) => ApiError::new(StatusCode::NOT_FOUND, format!("no hold {id}")),
        HoldError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
        HoldError::Invalid { field, message } => ApiError::bad_field(field, message),
        HoldError::Store(e) => ApiError::internal(e),
    }
}

/// Whether the user may see a hold: it touches one of their sites.
fn hold_in_scope(state: &AppState, user: &Principal, h: &Hold) -> bool {
    h.cameras.iter().any(|c| {
        state
            .cameras
            .iter()
            .any(|s| s.id == *c && user.covers_site(&s.site))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaceHold {
    cameras: Option<Vec<String>>,
    site: Option<String>,
    from: Time90k,
    to: Time90k,
    reason: String,
    #[serde(default)]
    reference: String,
    requested_by: Option<String>,
    expires_at: Option<Time90k>,
    #[serde(default)]
    keytags: bool,
}

/// `POST /api/v1/holds`.
pub async fn place(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let user = authorize(&state, &headers, Permission::PlaceHold)?;
    let req: PlaceHold = parse_json(&body)?;
    let cameras = match (req.cameras, &req.site) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_field(
                "site",
                "give either cameras or site, not both",
            ))
        }
        (None, None) => return Err(ApiError::bad_field("cameras", "give cameras or a site")),
        (Some(cams), None) => {
            if cams.is_empty() {
                return Err(ApiError::bad_field("cameras", "names no camera"));
            }
            for (i, c) in cams.iter().enumerate() {
                let Some(cam) = state.cameras.iter().find(|s| s.id == *c) else {
                    return Err(ApiError::bad_field(
                        &format!("cameras[{i}]"),
                        format!("unknown camera {c:?}"),
                    ));
                };
                if !user.covers_site(&cam.site) {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        format!("camera {c:?} is not in your sites"),
                    ));
                }
            }
            let mut cams = cams;
            cams.sort();
            cams.dedup();
            cams
        }
        (None, Some(site)) => {
            let Some(cams) = state.sites.get(site) else {
                return Err(ApiError::bad_field(
                    "site",
                    format!("unknown site {site:?}"),
                ));
            };
            if !user.covers_site(site) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("site {site:?} is not in your sites"),
                ));
            }
            if cams.is_empty() {
                return Err(ApiError::bad_field(
                    "site",
                    format!("site {site:?} has no cameras"),
                ));
            }
            cams.clone()
        }
    };
    let new = NewHold {
        cameras,
        site: req.site,
        from: req.from,
        to: req.to,
        reason: req.reason,
        reference: req.reference,
        requested_by: req.requested_by.unwrap_or_else(|| user.name.clone()),
        expires_at: req.expires_at,
        keytags: req.keytags,
    };
    let holds = state.holds.clone();
    let by = user.name.clone();
    let now = Time90k::now();
    let hold = tokio::task::spawn_blocking(move || holds.place(new, &by, now))
        .await
        .map_err(ApiError::internal)?
        .map_err(hold_error)?;
    tracing::info!(hold = hold.id, user = %user.name, "hold placed");
    let mut e = entry(&user, "hold.place", hold_object(&hold));
    e.reason = Some(hold.reason.clone());
    e.text = Some(format!("reference {}", hold.reference));
    state.record(e).await?;
    Ok((StatusCode::CREATED, Json(hold.to_json(now))).into_response())
}

/// `GET /api/v1/holds`.
pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let user = authorize_any(
        &state,
        &headers,
        &[
            Permission::PlaceHold,
            Permission::ReleaseHold,
            Permission::LogbookRead,
        ],
    )?;
    let now = Time90k::now();
    let snap = state.holds.snapshot();
    let out: Vec<_> = snap
        .holds()
        .filter(|h| hold_in_scope(&state, &user, h))
        .map(|h| h.to_json(now))
        .collect();
    Ok(Json(out).into_response())
}

fn find(state: &AppState, user: &Principal, id: &str) -> Result<Arc<Hold>, ApiError> {
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, format!("no hold {id:?}")))?;
    let snap = state.holds.snapshot();
    match snap.get(id) {
        Some(h) if hold_in_scope(state, user, h) => Ok(h.clone()),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no hold {id}"),
        )),
    }
}

/// `GET /api/v1/holds/{id}`.
pub async fn get_one(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let user = authorize_any(
        &state,
        &headers,
        &[
            Permission::PlaceHold,
            Permission::ReleaseHold,
            Permission::LogbookRead,
        ],
    )?;
    let h = find(&state, &user, &id)?;
    Ok(Json(h.to_json(Time90k::now())).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Release {
    reason: String,
}

/// `POST /api/v1/holds/{id}/release`.
pub async fn release(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let user = authorize(&state, &headers, Permission::ReleaseHold)?;
    let h = find(&state, &user, &id)?;
    let req: Release = parse_json(&body)?;
    let holds = state.holds.clone();
    let by = user.name.clone();
    let now = Time90k::now();
    let hold = tokio::task::spawn_blocking(move || holds.release(h.id, &req.reason, &by, now))
        .await
        .map_err(ApiError::internal)?
        .map_err(hold_error)?;
    tracing::info!(hold = hold.id, user = %user.name, "hold released");
    let mut e = entry(&user, "hold.release", hold_object(&hold));
    e.reason = hold.released.as_ref().map(|r| r.reason.clone());
    state.record(e).await?;
    Ok(Json(hold.to_json(now)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Extend {
    expires_at: Time90k,
    reason: String,
}

/// `POST /api/v1/holds/{id}/extend`.
pub async fn extend(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let user = authorize(&state, &headers, Permission::PlaceHold)?;
    let h = find(&state, &user, &id)?;
    let req: Extend = parse_json(&body)?;
    let holds = state.holds.clone();
    let by = user.name.clone();
    let now = Time90k::now();
    let hold = tokio::task::spawn_blocking(move || {
        holds.extend(h.id, req.expires_at, &req.reason, &by, now)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(hold_error)?;
    tracing::info!(hold = hold.id, user = %user.name, "hold extended");
    let mut e = entry(&user, "hold.extend", hold_object(&hold));
    e.reason = hold.extensions.last().map(|x| x.reason.clone());
    state.record(e).await?;
    Ok(Json(hold.to_json(now)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EraseRequest {
    camera: String,
    from: Time90k,
    to: Time90k,
    reason: String,
    #[serde(default)]
    reference: String,
}

/// `POST /api/v1/erasures`: 200 `{bytes_freed, segments}`, 409 when a hold covers the range.
pub async fn erasure(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let user = authorize(&state, &headers, Permission::Erase)?;
    let req: EraseRequest = parse_json(&body)?;
    if !state.cameras.iter().any(|c| c.id == req.camera) {
        return Err(ApiError::bad_field(
            "camera",
            format!("unknown camera {:?}", req.camera),
        ));
    }
    camera_in_scope(&state, &user, &req.camera)?;
    if req.from >= req.to {
        return Err(ApiError::bad_field("to", "must be after from"));
    }
    if req.reason.trim().is_empty() {
        return Err(ApiError::bad_field("reason", "must not be empty"));
    }
    let st = state.clone();
    let camera = req.camera.clone();
    let object = json!({
        "camera": req.camera,
        "from": req.from.to_rfc3339(),
        "to": req.to.to_rfc3339(),
        "reference": req.reference,
    });
    let reason = req.reason.clone();
    let result = tokio::task::spawn_blocking(move || {
        // What the writer has accepted becomes durable first, so it can be erased too.
        st.writer.flush();
        erase(
            &st.store,
            &st.holds,
            &camera,
            req.from,
            req.to,
            Time90k::now(),
        )
    })
    .await
    .map_err(ApiError::internal)?;
    match result {
        Ok(e) => {
            tracing::info!(camera = %req.camera, user = %user.name, reference = %req.reference,
                segments = e.segments, "erasure done");
            let mut l = entry(&user, "erasure", object);
            l.reason = Some(reason);
            l.text = Some(format!(
                "{} segments erased, {} bytes freed",
                e.segments, e.bytes_freed
            ));
            state.record(l).await?;
            Ok(Json(json!({
                "camera": req.camera,
                "segments": e.segments,
                "record_bytes": e.record_bytes,
                "bytes_freed": e.bytes_freed,
            }))
            .into_response())
        }
        Err(ErasureError::Held(ids)) => {
            let mut l = entry(&user, "erasure", object);
            l.reason = Some(reason);
            l.text = Some(format!("refused: held by hold(s) {ids:?}"));
            state.record(l).await?;
            let mut e = ApiError::new(
                StatusCode::CONFLICT,
                format!("an active hold covers part of the range: hold(s) {ids:?}"),
            );
            e.detail = json!({ "holds": ids });
            Err(e)
        }
        Err(ErasureError::Store(e)) => Err(ApiError::internal(e)),
    }
}

fn hold_object(h: &Hold) -> serde_json::Value {
    json!({
        "hold": h.id,
        "cameras": h.cameras,
        "site": h.site,
        "from": h.from.to_rfc3339(),
        "to": h.to.to_rfc3339(),
        "expires_at": h.expires_at.map(|t| t.to_rfc3339()),
        "keytags": h.keytags,
    })
}
