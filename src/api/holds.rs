//! Holds and erasures over HTTP: `/api/v1/holds...` and `POST /api/v1/erasures`.
//!
//! Bodies are JSON; a wrong or missing field is a 400 that names it. Site scope: a user sees a
//! hold that pins at least one camera of their sites, but of a hold that reaches beyond them only
//! their own cameras and no reason, reference or requester (`"partial": true`); releasing or
//! extending needs every camera of the hold in scope (`*` users can always, which also covers
//! holds on cameras no longer in the config). Holds pin what exists: `to` may lie at most
//! `holds.max_future` past now, and every hold carries a review date (`expires_at`, by default
//! the policy's `hold_review` from now) at which it lapses unless extended (WB 8). Hold changes
//! answer only once the hold is durable and published to the sweeper. An erasure writes its
//! intent to the logbook before anything is deleted, and its outcome after.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use super::auth::{Permission, Principal};
use super::{
    authorize, authorize_any, check_len, entry, read_body, ApiError, AppState, Param,
    JSON_BODY_LIMIT, MAX_REASON, MAX_REFERENCE,
};
use crate::retention::erasure::{erase, ErasureError};
use crate::retention::holds::{Hold, HoldError, NewHold};
use crate::time::{duration_to_ticks, Time90k};

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
        HoldError::Journal(e) => ApiError::internal(e),
    }
}

/// How much of a hold a user may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Nothing: it pins no camera of the user's sites.
    None,
    /// Some of its cameras are the user's, some are not (or no longer configured).
    Partial,
    /// Every camera is in the user's sites (or the user is a `*` user).
    Full,
}

/// The site of one of a hold's cameras: as recorded when the hold was placed (holds from before
/// that was recorded fall back to the current config; an unknown camera has none).
fn held_site(state: &AppState, h: &Hold, camera: &str) -> Option<String> {
    match h.camera_sites.get(camera) {
        Some(s) => Some(s.clone()),
        None if h.camera_sites.is_empty() => state.camera_site(camera),
        None => None,
    }
}

/// The sites of a hold (for its logbook entries): empty when any camera's site is unknown, so
/// such entries are for `*` users only.
fn hold_sites(state: &AppState, h: &Hold) -> Vec<String> {
    let mut v = Vec::new();
    for c in &h.cameras {
        match held_site(state, h, c) {
            Some(s) => v.push(s.to_owned()),
            None => return Vec::new(),
        }
    }
    v.sort();
    v.dedup();
    v
}

fn hold_scope(state: &AppState, user: &Principal, h: &Hold) -> Scope {
    if user.sites.is_none() {
        return Scope::Full;
    }
    let mine = h
        .cameras
        .iter()
        .filter(|c| held_site(state, h, c).is_some_and(|s| user.covers_site(&s)))
        .count();
    match mine {
        0 => Scope::None,
        n if n == h.cameras.len() => Scope::Full,
        _ => Scope::Partial,
    }
}

/// The API view of a hold for this user: a partial view lists only the user's cameras and leaves
/// out what belongs to the other sites' incident (reason, reference, requester, change reasons).
fn hold_view(state: &AppState, user: &Principal, h: &Hold, now: Time90k) -> serde_json::Value {
    let mut v = h.to_json(now);
    if hold_scope(state, user, h) == Scope::Partial {
        let mine: Vec<&String> = h
            .cameras
            .iter()
            .filter(|c| held_site(state, h, c).is_some_and(|s| user.covers_site(&s)))
            .collect();
        let null = serde_json::Value::Null;
        v["cameras"] = json!(mine);
        let sites: BTreeMap<&String, &String> = h
            .camera_sites
            .iter()
            .filter(|(c, _)| mine.contains(c))
            .collect();
        v["camera_sites"] = json!(sites);
        for k in ["reason", "reference", "requested_by", "placed_by", "site"] {
            v[k] = null.clone();
        }
        if let Some(r) = v.get_mut("released").filter(|r| r.is_object()) {
            r["reason"] = null.clone();
            r["by"] = null.clone();
        }
        if let Some(exts) = v.get_mut("extensions").and_then(|e| e.as_array_mut()) {
            for x in exts {
                x["reason"] = null.clone();
                x["by"] = null.clone();
            }
        }
        v["partial"] = json!(true);
    } else {
        v["partial"] = json!(false);
    }
    v
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
    body: Body,
) -> Result<Response, ApiError> {
    let user = authorize(&state, &headers, Permission::PlaceHold)?;
    let body = read_body(&headers, body, JSON_BODY_LIMIT).await?;
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
                // Another site's camera is answered like one that does not exist.
                if !state.camera_site(c).is_some_and(|s| user.covers_site(&s)) {
                    return Err(ApiError::bad_field(
                        &format!("cameras[{i}]"),
                        format!(
                            "unknown camera {:?}",
                            c.chars().take(64).collect::<String>()
                        ),
                    ));
                }
            }
            let mut cams = cams;
            cams.sort();
            cams.dedup();
            cams
        }
        (None, Some(site)) => {
            let live = state.live();
            let cams = live.sites.get(site).filter(|_| user.covers_site(site));
            let Some(cams) = cams else {
                return Err(ApiError::bad_field(
                    "site",
                    format!(
                        "unknown site {:?}",
                        site.chars().take(64).collect::<String>()
                    ),
                ));
            };
            if cams.is_empty() {
                return Err(ApiError::bad_field(
                    "site",
                    format!("site {site:?} has no cameras"),
                ));
            }
            cams.clone()
        }
    };
    check_len("reason", &req.reason, MAX_REASON)?;
    check_len("reference", &req.reference, MAX_REFERENCE)?;
    if let Some(r) = &req.requested_by {
        check_len("requested_by", r, MAX_REFERENCE)?;
    }
    // The trusted time: footage is stamped with it, and the review date and lapse are judged
    // by it (never the raw wall clock, which may have jumped).
    let now = state.clock.retention_now();
    // A hold pins what exists: its end may reach only a little past now.
    let latest = now.add_ticks(duration_to_ticks(state.live().hold_max_future));
    if req.to > latest {
        return Err(ApiError::bad_field(
            "to",
            format!(
                "may be at most {} in the future ({}); for an ongoing incident place another \
                 hold later",
                humantime::format_duration(state.live().hold_max_future),
                latest.to_rfc3339()
            ),
        ));
    }
    // Every hold has a review date: by default, and at the latest, the shortest review period
    // of its cameras' policies from now (WB 8: decided within two weeks).
    let review = review_period(&state, &cameras);
    let latest_review = now.add_ticks(duration_to_ticks(review));
    let expires_at = req.expires_at.unwrap_or(latest_review);
    if expires_at > latest_review {
        return Err(ApiError::bad_field(
            "expires_at",
            format!(
                "may be at most {} from now ({}): the hold is reviewed by then, and extended if \
                 it is still needed",
                humantime::format_duration(review),
                latest_review.to_rfc3339()
            ),
        ));
    }
    let camera_sites: BTreeMap<String, String> = cameras
        .iter()
        .filter_map(|c| Some((c.clone(), state.camera_site(c)?.to_owned())))
        .collect();
    let new = NewHold {
        cameras,
        site: req.site,
        from: req.from,
        to: req.to,
        reason: req.reason,
        reference: req.reference,
        requested_by: req.requested_by.unwrap_or_else(|| user.name.clone()),
        expires_at: Some(expires_at),
        keytags: req.keytags,
        camera_sites,
    };
    // The change and its logbook entry run to the end even if the client goes away.
    let st = state.clone();
    let u = user.clone();
    let hold = detached(async move {
        // The hold and its `hold.place` entry are one batch: durable together or not at all.
        let hold = tokio::task::spawn_blocking(move || {
            st.holds.place_with(new, &u.name, now, &mut |hold, batch| {
                let mut e = entry(&u, "hold.place", hold_object(hold));
                e.reason = Some(hold.reason.clone());
                e.reference = Some(hold.reference.clone()).filter(|r| !r.is_empty());
                e.sites = hold_sites(&st, hold);
                st.record_with(e, batch)
                    .map(drop)
                    .map_err(|e| HoldError::Journal(e.to_string()))
            })
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(hold_error)?;
        tracing::info!(hold = hold.id, "hold placed");
        Ok(hold)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(hold_view(&state, &user, &hold, now)),
    )
        .into_response())
}

/// The review period of a hold on these cameras: the shortest `hold_review` of their policies.
fn review_period(state: &AppState, cameras: &[String]) -> Duration {
    let live = state.live();
    cameras
        .iter()
        .filter_map(|c| live.hold_review.get(c))
        .min()
        .copied()
        .unwrap_or(Duration::from_secs(14 * 86_400))
}

/// Runs `f` as a task of its own, so that a client going away cannot stop it between a change
/// and its logbook entry.
async fn detached<T: Send + 'static>(
    f: impl Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(f).await.map_err(ApiError::internal)?
}

const HOLD_READERS: [Permission; 3] = [
    Permission::PlaceHold,
    Permission::ReleaseHold,
    Permission::LogbookRead,
];

/// `GET /api/v1/holds`.
pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let user = authorize_any(&state, &headers, &HOLD_READERS)?;
    let now = state.clock.retention_now();
    let snap = state.holds.snapshot();
    let out: Vec<_> = snap
        .holds()
        .filter(|h| hold_scope(&state, &user, h) != Scope::None)
        .map(|h| hold_view(&state, &user, h, now))
        .collect();
    Ok(Json(out).into_response())
}

/// A hold the user may see (404 otherwise, like one that does not exist).
fn find(state: &AppState, user: &Principal, id: &str) -> Result<Arc<Hold>, ApiError> {
    let shown: String = id.chars().take(32).collect();
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, format!("no hold {shown:?}"));
    let id: u64 = id.parse().map_err(|_| not_found())?;
    let snap = state.holds.snapshot();
    match snap.get(id) {
        Some(h) if hold_scope(state, user, h) != Scope::None => Ok(h.clone()),
        _ => Err(not_found()),
    }
}

/// A hold the user may change: every camera in scope.
fn find_changeable(state: &AppState, user: &Principal, id: &str) -> Result<Arc<Hold>, ApiError> {
    let h = find(state, user, id)?;
    if hold_scope(state, user, &h) != Scope::Full {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "hold {} also pins cameras outside your sites; someone with every site may change it",
                h.id
            ),
        ));
    }
    Ok(h)
}

/// `GET /api/v1/holds/{id}`.
pub async fn get_one(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Param(id): Param,
) -> Result<Response, ApiError> {
    let user = authorize_any(&state, &headers, &HOLD_READERS)?;
    let h = find(&state, &user, &id)?;
    Ok(Json(hold_view(&state, &user, &h, state.clock.retention_now())).into_response())
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
    Param(id): Param,
    body: Body,
) -> Result<Response, ApiError> {
    let user = authorize(&state, &headers, Permission::ReleaseHold)?;
    let h = find_changeable(&state, &user, &id)?;
    let body = read_body(&headers, body, JSON_BODY_LIMIT).await?;
    let req: Release = parse_json(&body)?;
    if req.reason.trim().is_empty() {
        return Err(ApiError::bad_field("reason", "must not be empty"));
    }
    check_len("reason", &req.reason, MAX_REASON)?;
    let now = state.clock.retention_now();
    // Releasing lets footage go at the next sweep: the logbook has it first, and the outcome
    // after; the whole runs to the end even if the client goes away.
    let st = state.clone();
    let u = user.clone();
    let hold = detached(async move {
        let mut intent = entry(&u, "hold.release", hold_object(&h));
        intent.reason = Some(req.reason.clone());
        intent.reference = Some(h.reference.clone()).filter(|r| !r.is_empty());
        intent.sites = hold_sites(&st, &h);
        intent.text = Some("intent: release this hold".into());
        let intent = st.record(intent).await?;
        let holds = st.holds.clone();
        let by = u.name.clone();
        let id = h.id;
        let result = tokio::task::spawn_blocking(move || holds.release(id, &req.reason, &by, now))
            .await
            .map_err(ApiError::internal)?;
        let mut outcome = entry(&u, "hold.release.outcome", json!({ "hold": id }));
        outcome.refers_to = Some(intent.entry.seq);
        outcome.refers_hash = Some(intent.hash);
        outcome.sites = hold_sites(&st, &h);
        outcome.text = Some(match &result {
            Ok(_) => "done: released".to_owned(),
            Err(e) => format!("refused: {e}"),
        });
        st.record(outcome).await?;
        let hold = result.map_err(hold_error)?;
        tracing::info!(hold = hold.id, user = %u.name, "hold released");
        Ok(hold)
    })
    .await?;
    Ok(Json(hold_view(&state, &user, &hold, now)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Extend {
    expires_at: Time90k,
    reason: String,
}

/// `POST /api/v1/holds/{id}/extend`: a later review date. Deciding to keep footage longer is
/// the same decision as letting it go, so it needs the release permission.
pub async fn extend(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Param(id): Param,
    body: Body,
) -> Result<Response, ApiError> {
    let user = authorize(&state, &headers, Permission::ReleaseHold)?;
    let h = find_changeable(&state, &user, &id)?;
    let body = read_body(&headers, body, JSON_BODY_LIMIT).await?;
    let req: Extend = parse_json(&body)?;
    check_len("reason", &req.reason, MAX_REASON)?;
    let now = state.clock.retention_now();
    let review = review_period(&state, &h.cameras);
    let latest = now.add_ticks(duration_to_ticks(review));
    if req.expires_at > latest {
        return Err(ApiError::bad_field(
            "expires_at",
            format!(
                "may be at most {} from now ({}); extend again when it is due",
                humantime::format_duration(review),
                latest.to_rfc3339()
            ),
        ));
    }
    let st = state.clone();
    let u = user.clone();
    let hold = detached(async move {
        // The extension and its `hold.extend` entry are one batch.
        let hold = tokio::task::spawn_blocking(move || {
            let by = u.name.clone();
            st.holds.extend_with(
                h.id,
                req.expires_at,
                &req.reason,
                &by,
                now,
                &mut |hold, batch| {
                    let mut e = entry(&u, "hold.extend", hold_object(hold));
                    e.reason = hold.extensions.last().map(|x| x.reason.clone());
                    e.reference = Some(hold.reference.clone()).filter(|r| !r.is_empty());
                    e.sites = hold_sites(&st, hold);
                    st.record_with(e, batch)
                        .map(drop)
                        .map_err(|e| HoldError::Journal(e.to_string()))
                },
            )
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(hold_error)?;
        tracing::info!(hold = hold.id, "hold extended");
        Ok(hold)
    })
    .await?;
    Ok(Json(hold_view(&state, &user, &hold, now)).into_response())
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
/// The intent is in the logbook (synced) before anything is deleted; the outcome follows as an
/// entry that refers to it.
pub async fn erasure(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let user = authorize(&state, &headers, Permission::Erase)?;
    let body = read_body(&headers, body, JSON_BODY_LIMIT).await?;
    let req: EraseRequest = parse_json(&body)?;
    let Some(site) = state
        .camera_site(&req.camera)
        .filter(|s| user.covers_site(s))
    else {
        return Err(ApiError::bad_field(
            "camera",
            format!(
                "unknown camera {:?}",
                req.camera.chars().take(64).collect::<String>()
            ),
        ));
    };
    if req.from >= req.to {
        return Err(ApiError::bad_field("to", "must be after from"));
    }
    if req.reason.trim().is_empty() {
        return Err(ApiError::bad_field("reason", "must not be empty"));
    }
    let object = json!({
        "camera": req.camera,
        "from": req.from.to_rfc3339(),
        "to": req.to.to_rfc3339(),
        "reference": req.reference,
    });
    check_len("reason", &req.reason, MAX_REASON)?;
    check_len("reference", &req.reference, MAX_REFERENCE)?;
    // Intent, erasure and outcome run to the end even if the client goes away.
    let st = state.clone();
    let u = user.clone();
    detached(async move {
        let mut intent = entry(&u, "erasure", object.clone());
        intent.reason = Some(req.reason.clone());
        intent.reference = Some(req.reference.clone()).filter(|r| !r.is_empty());
        intent.sites = vec![site.clone()];
        intent.text = Some("intent: erase this range unless a hold covers it".into());
        let intent = st.record(intent).await?;

        let st2 = st.clone();
        let camera = req.camera.clone();
        let result = tokio::task::spawn_blocking(move || {
            // What the writer has accepted becomes durable first, so it can be erased too.
            st2.writer.flush();
            erase(
                &st2.store,
                &st2.holds,
                &camera,
                req.from,
                req.to,
                st2.clock.retention_now(),
            )
        })
        .await
        .map_err(ApiError::internal)?;
        let mut outcome = entry(&u, "erasure.outcome", object);
        outcome.refers_to = Some(intent.entry.seq);
        outcome.refers_hash = Some(intent.hash.clone());
        outcome.sites = vec![site];
        match result {
            Ok(e) => {
                tracing::info!(camera = %req.camera, user = %u.name, reference = %req.reference,
                    segments = e.segments, "erasure done");
                outcome.text = Some(format!(
                    "done: {} segments erased, {} bytes freed",
                    e.segments, e.bytes_freed
                ));
                st.record(outcome).await?;
                Ok(Json(json!({
                    "camera": req.camera,
                    "segments": e.segments,
                    "record_bytes": e.record_bytes,
                    "bytes_freed": e.bytes_freed,
                    "logbook_seq": intent.entry.seq,
                }))
                .into_response())
            }
            Err(ErasureError::Held(ids)) => {
                outcome.text = Some(format!("refused: held by hold(s) {ids:?}"));
                st.record(outcome).await?;
                let mut e = ApiError::new(
                    StatusCode::CONFLICT,
                    format!("an active hold covers part of the range: hold(s) {ids:?}"),
                );
                e.detail = json!({ "holds": ids });
                Err(e)
            }
            Err(ErasureError::Store(err)) => {
                outcome.text = Some("failed: storage error (see the daemon's log)".into());
                if let Err(le) = st.record(outcome).await {
                    tracing::error!(error = ?le, "could not log an erasure's failure");
                }
                Err(ApiError::internal(err))
            }
        }
    })
    .await
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
