//! `POST /api/v1/keytags/events` (access systems) and `GET /api/v1/keytags/events` (logged
//! queries by tag or by door).
//!
//! A batch is NDJSON or one JSON array of `{tag, door, time[, site]}`; it is stored whole or not at
//! all, and a 400 names the first bad line. Queries need a `reason` and a `purpose` that fits the
//! kind of query: by tag for `tag-check`, `subject-access` or `police`; by door and time range for
//! `witness-search` or `police`. Every query is logged (with the number of events found) before
//! the events are returned, and only the user's sites are searched.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::{authorize, entry, parse_range, ApiError, AppState};
use crate::keytags::{self, Event};
use crate::roles::Permission;
use crate::time::Time90k;

/// Purposes of a query by tag.
pub const TAG_PURPOSES: [&str; 3] = ["tag-check", "subject-access", "police"];
/// Purposes of a query by door.
pub const DOOR_PURPOSES: [&str; 2] = ["witness-search", "police"];

/// `POST /api/v1/keytags/events`.
pub async fn submit(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let user = authorize(&state, &headers, Permission::KeytagsWrite)?;
    let text =
        std::str::from_utf8(&body).map_err(|_| ApiError::bad_field("body", "is not UTF-8 text"))?;
    let only_site = match &user.sites {
        Some(s) if s.len() == 1 => Some(s[0].clone()),
        _ => None,
    };
    let site_for = |site: Option<&str>| -> Result<String, String> {
        match site {
            Some(s) if !state.sites.contains_key(s) => Err(format!("unknown site {s:?}")),
            Some(s) if !user.covers_site(s) => Err(format!("site {s:?} is not in your sites")),
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
#[derive(Deserialize)]
pub struct KeytagQuery {
    tag: Option<String>,
    door: Option<String>,
    from: Option<String>,
    to: Option<String>,
    reason: Option<String>,
    purpose: Option<String>,
}

fn event_json(e: &Event) -> serde_json::Value {
    json!({ "tag": e.tag, "door": e.door, "site": e.site, "time": e.time.to_rfc3339() })
}

/// `GET /api/v1/keytags/events`.
pub async fn query(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<KeytagQuery>,
) -> Result<Response, ApiError> {
    let user = authorize(&state, &headers, Permission::KeytagsRead)?;
    let tag = q.tag.filter(|s| !s.is_empty());
    let door = q.door.filter(|s| !s.is_empty());
    let reason = q
        .reason
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad_field("reason", "is required"))?;
    let purpose = q
        .purpose
        .ok_or_else(|| ApiError::bad_field("purpose", "is required"))?;
    let (allowed, kind): (&[&str], &str) = match (&tag, &door) {
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
                "{purpose:?} is not a purpose of a query by {kind}; one of {}",
                allowed.join(", ")
            ),
        ));
    }
    let (from, to) = if kind == "tag" && q.from.is_none() && q.to.is_none() {
        (Time90k(i64::MIN / 2), Time90k(i64::MAX / 2))
    } else {
        parse_range(q.from.as_deref(), q.to.as_deref())?
    };
    let sites: Vec<String> = match &user.sites {
        Some(s) => s.clone(),
        None => state.sites.keys().cloned().collect(),
    };
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
            "from": (from.0 > i64::MIN / 2).then(|| from.to_rfc3339()),
            "to": (to.0 < i64::MAX / 2).then(|| to.to_rfc3339()),
            "sites": sites,
            "results": events.len(),
        }),
    );
    e.reason = Some(reason);
    e.purpose = Some(purpose);
    let logged = state.record(e).await?;
    Ok(Json(json!({
        "events": events.iter().map(event_json).collect::<Vec<_>>(),
        "logbook_seq": logged.entry.seq,
    }))
    .into_response())
}
