//! `GET /api/v1/logbook`, `GET /api/v1/logbook/{seq}`, `GET /api/v1/logbook/verify`, and the
//! additions that never change an entry: `POST .../{seq}/finding` and `POST .../{seq}/signoff`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::auth::Principal;
use super::holds::parse_json;
use super::{authorize, entry, ApiError, AppState};
use crate::logbook::{Logbook, LogbookError};
use crate::roles::Permission;
use crate::time::Time90k;

/// Most entries one request returns.
pub const MAX_ENTRIES: usize = 10_000;

/// Query of the logbook.
#[derive(Deserialize)]
pub struct LogbookQuery {
    from: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/v1/logbook?from=&to=&limit=`.
pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<LogbookQuery>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Permission::LogbookRead)?;
    let parse = |field: &str, v: &Option<String>, default: Time90k| match v {
        None => Ok(default),
        Some(s) => Time90k::parse_rfc3339(s).map_err(|e| ApiError::bad_field(field, e)),
    };
    let from = parse("from", &q.from, Time90k(i64::MIN / 2))?;
    let to = parse("to", &q.to, Time90k(i64::MAX / 2))?;
    let limit = q.limit.unwrap_or(MAX_ENTRIES).clamp(1, MAX_ENTRIES);
    let st = state.clone();
    let entries =
        tokio::task::spawn_blocking(move || Logbook::list(st.store.index(), from, to, limit))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
    Ok(Json(json!({ "entries": entries })).into_response())
}

fn parse_seq(seq: &str) -> Result<u64, ApiError> {
    seq.parse()
        .map_err(|_| ApiError::bad_field("seq", format!("{seq:?} is not an entry number")))
}

async fn fetch(state: &Arc<AppState>, seq: u64) -> Result<crate::logbook::HashedEntry, ApiError> {
    let st = state.clone();
    match tokio::task::spawn_blocking(move || Logbook::get(st.store.index(), seq))
        .await
        .map_err(ApiError::internal)?
    {
        Ok(e) => Ok(e),
        Err(LogbookError::NoSuchEntry(_)) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no logbook entry {seq}"),
        )),
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// `GET /api/v1/logbook/{seq}`.
pub async fn get_one(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(seq): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Permission::LogbookRead)?;
    let seq = parse_seq(&seq)?;
    Ok(Json(fetch(&state, seq).await?).into_response())
}

/// `GET /api/v1/logbook/verify`: `{ok, entries, first_bad_seq, problem, head_hash}`.
pub async fn verify(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Permission::LogbookRead)?;
    let st = state.clone();
    let v = tokio::task::spawn_blocking(move || st.logbook.verify(st.store.index()))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok(Json(v).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Finding {
    finding: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignOff {
    note: String,
}

async fn add(
    state: Arc<AppState>,
    user: Arc<Principal>,
    seq: String,
    action: &str,
    text: String,
    field: &str,
) -> Result<Response, ApiError> {
    let seq = parse_seq(&seq)?;
    if text.trim().is_empty() {
        return Err(ApiError::bad_field(field, "must not be empty"));
    }
    fetch(&state, seq).await?;
    let mut e = entry(&user, action, json!({ "entry": seq }));
    e.refers_to = Some(seq);
    e.text = Some(text);
    let logged = state.record(e).await?;
    Ok((StatusCode::CREATED, Json(logged)).into_response())
}

/// `POST /api/v1/logbook/{seq}/finding` `{finding}`.
pub async fn finding(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(seq): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let user = authorize(&state, &headers, Permission::SignOff)?;
    let f: Finding = parse_json(&body)?;
    add(state, user, seq, "finding", f.finding, "finding").await
}

/// `POST /api/v1/logbook/{seq}/signoff` `{note}`.
pub async fn signoff(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(seq): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let user = authorize(&state, &headers, Permission::SignOff)?;
    let s: SignOff = parse_json(&body)?;
    add(state, user, seq, "signoff", s.note, "note").await
}

/// `GET /api/v1/logbook/head`: `{seq, mac, time, keyed}`, the head of the chain, for a case
/// system to record (a later `logbook verify` shows whether the chain still holds that entry).
pub async fn head(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Permission::LogbookRead)?;
    Ok(Json(state.logbook.head()).into_response())
}
