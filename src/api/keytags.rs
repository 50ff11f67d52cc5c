//! `POST /api/v1/keytags/events` (access systems) and `GET /api/v1/keytags/events` (logged
//! queries by tag or by door).
//!
//! A batch is NDJSON or one JSON array of `{tag, door, time[, site]}`; it is stored whole or not at
//! all, and a 400 names the first bad line. Queries need a `reason`, a `purpose` that fits the
//! kind of query (by tag for `tag-check`, `subject-access` or `police`; by door for
//! `witness-search` or `police`), and a `from`/`to` range no longer than the purpose's cap
//! (`keytags.max_range`: a tag check a week, a witness search a day; K3). A `subject-access`
//! query names one tag: the data subject's own (K4). `police` queries need `reference` and
//! `recipient` (K5). Every query is logged (with the number of events found) before the events
//! are returned, refused ones too, and only the user's sites are searched.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::auth::Principal;
use super::export::truncate;
use super::{
    authenticate, authorize, check_len, entry, log_refusal, parse_query, parse_range, read_body,
    ApiError, AppState, KEYTAG_BODY_LIMIT, MAX_REASON, MAX_REFERENCE,
};
use crate::keytags::{self, Event};
use crate::roles::Permission;
use crate::time::duration_to_ticks;

/// Purposes of a query by tag.
pub const TAG_PURPOSES: [&str; 3] = ["tag-check", "subject-access", "police"];
/// Purposes of a query by door.
pub const DOOR_PURPOSES: [&str; 2] = ["witness-search", "police"];

/// `POST /api/v1/keytags/events`.
pub async fn submit(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let user = authorize(&state, &headers, Permission::KeytagsWrite)?;
    let body = read_body(&headers, body, KEYTAG_BODY_LIMIT).await?;
    let text =
        std::str::from_utf8(&body).map_err(|_| ApiError::bad_field("body", "is not UTF-8 text"))?;
    let only_site = match &user.sites {
        Some(s) if s.len() == 1 => Some(s[0].clone()),
        _ => None,
    };
    let site_for = |site: Option<&str>| -> Result<String, String> {
        match site {
            // Another site is answered like one that does not exist.
            Some(s) if !state.live().sites.contains_key(s) || !user.covers_site(s) => {
                Err(format!("unknown site {:?}", truncate(s, 64)))
            }
            Some(s) => Ok(s.to_owned()),
            None => only_site
                .clone()
                .ok_or_else(|| "is required: this account submits for several sites".to_owned()),
        }
    };
    let events = keytags::parse_batch(text, site_for).map_err(|e| {
        let mut err = ApiError::new(StatusCode::BAD_REQUEST, e.to_string());
        err.detail = json!({ "line": e.line, "field": "body" });
        err
    })?;
    let n = events.len();
    let st = state.clone();
    let new = tokio::task::spawn_blocking(move || keytags::store(st.store.index(), &events))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    state.metrics.keytag_events.inc_by(new as u64);
    Ok(Json(json!({ "received": n, "stored": new, "duplicates": n - new })).into_response())
}

/// Query of key-tag events.
#[derive(Deserialize, Default)]
pub struct KeytagQuery {
    tag: Option<String>,
    door: Option<String>,
    from: Option<String>,
    to: Option<String>,
    reason: Option<String>,
    purpose: Option<String>,
    reference: Option<String>,
    recipient: Option<String>,
}

fn event_json(e: &Event) -> serde_json::Value {
    json!({ "tag": e.tag, "door": e.door, "site": e.site, "time": e.time.to_rfc3339() })
}

fn non_empty(v: &Option<String>) -> Option<String> {
    v.as_ref()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The user's sites to search.
fn sites_of(state: &AppState, user: &Principal) -> Vec<String> {
    let mut v: Vec<String> = match &user.sites {
        Some(s) => s.clone(),
        None => state.live().sites.keys().cloned().collect(),
    };
    v.sort();
    v
}

/// `GET /api/v1/keytags/events`.
pub async fn query(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let user = authenticate(&state, &headers)?;
    let q: KeytagQuery = match check(&state, &user, raw.as_deref()) {
        Ok(q) => q,
        Err(err) => return Ok(refuse(&state, &user, raw.as_deref(), err).await),
    };
    let tag = non_empty(&q.tag);
    let door = non_empty(&q.door);
    let (from, to) = parse_range(q.from.as_deref(), q.to.as_deref())?;
    let sites = sites_of(&state, &user);
    let st = state.clone();
    let (t, d, s) = (tag.clone(), door.clone(), sites.clone());
    let events = tokio::task::spawn_blocking(move || match (t, d) {
        (Some(tag), _) => keytags::by_tag(st.store.index(), &tag, from, to, Some(&s)),
        (_, Some(door)) => keytags::by_door(st.store.index(), &door, from, to, &s),
        _ => unreachable!("checked above"),
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;

    let mut e = entry(
        &user,
        "keytags.query",
        json!({
            "tag": tag,
            "door": door,
            "from": from.to_rfc3339(),
            "to": to.to_rfc3339(),
            "sites": sites,
            "results": events.len(),
        }),
    );
    e.reason = non_empty(&q.reason);
    e.purpose = non_empty(&q.purpose);
    e.reference = non_empty(&q.reference);
    e.recipient = non_empty(&q.recipient);
    e.sites = sites;
    let logged = state.record(e).await?;
    Ok(Json(json!({
        "events": events.iter().map(event_json).collect::<Vec<_>>(),
        "logbook_seq": logged.entry.seq,
    }))
    .into_response())
}

/// Everything that can refuse a query, in the order 403, 400.
fn check(state: &AppState, user: &Principal, raw: Option<&str>) -> Result<KeytagQuery, ApiError> {
    if !user.can(Permission::KeytagsRead) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("role {} may not do this", user.role),
        ));
    }
    let q: KeytagQuery = parse_query(raw)?;
    non_empty(&q.reason).ok_or_else(|| ApiError::bad_field("reason", "is required"))?;
    for (field, v, max) in [
        ("tag", &q.tag, 128),
        ("door", &q.door, 128),
        ("reason", &q.reason, MAX_REASON),
        ("reference", &q.reference, MAX_REFERENCE),
        ("recipient", &q.recipient, MAX_REFERENCE),
    ] {
        check_len(field, v.as_deref().unwrap_or(""), max)?;
    }
    let purpose =
        non_empty(&q.purpose).ok_or_else(|| ApiError::bad_field("purpose", "is required"))?;
    let (allowed, kind): (&[&str], &str) = match (non_empty(&q.tag), non_empty(&q.door)) {
        (Some(_), None) => (&TAG_PURPOSES, "tag"),
        (None, Some(_)) => (&DOOR_PURPOSES, "door"),
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_field(
                "door",
                "give either tag or door, not both",
            ))
        }
        (None, None) => return Err(ApiError::bad_field("tag", "give tag or door")),
    };
    if !allowed.contains(&purpose.as_str()) {
        return Err(ApiError::bad_field(
            "purpose",
            format!(
                "{:?} is not a purpose of a query by {kind}; one of {}",
                truncate(&purpose, 64),
                allowed.join(", ")
            ),
        ));
    }
    if purpose == "police" {
        for (field, v) in [("reference", &q.reference), ("recipient", &q.recipient)] {
            if non_empty(v).is_none() {
                return Err(ApiError::bad_field(
                    field,
                    "is required for purpose \"police\" (the formal request's case and who receives the data)",
                ));
            }
        }
    }
    let (from, to) = parse_range(q.from.as_deref(), q.to.as_deref())?;
    if let Some(max) = state.live().keytag_max_range.get(&purpose) {
        if to.0 - from.0 > duration_to_ticks(*max) {
            return Err(ApiError::bad_field(
                "to",
                format!(
                    "the range may cover at most {} for purpose {purpose:?}",
                    humantime::format_duration(*max)
                ),
            ));
        }
    }
    Ok(q)
}

/// Logs a refused query with what was asked, and marks the response as logged.
async fn refuse(
    state: &Arc<AppState>,
    user: &Principal,
    raw: Option<&str>,
    err: ApiError,
) -> Response {
    let q: KeytagQuery = parse_query(raw).unwrap_or_default();
    let mut e = entry(
        user,
        "keytags.query.refused",
        json!({
            "query": raw.map(|r| truncate(r, 256)),
            "status": err.status().as_u16(),
        }),
    );
    e.reason = non_empty(&q.reason).map(|r| truncate(&r, 1024));
    e.purpose = non_empty(&q.purpose).map(|r| truncate(&r, 64));
    e.reference = non_empty(&q.reference).map(|r| truncate(&r, 256));
    e.recipient = non_empty(&q.recipient).map(|r| truncate(&r, 256));
    // Whose sites would have been searched: a scoped user's own refusals stay visible to them.
    e.sites = if user.sites.is_some() {
        sites_of(state, user)
    } else {
        Vec::new()
    };
    log_refusal(state, user, e, err).await
}
