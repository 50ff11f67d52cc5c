//! `POST /api/v1/clock/accept`: an operator accepts a wall-clock jump (`crate::wallclock`).
//!
//! Accepting a forward jump lets the next sweep expire everything the new time makes old, across
//! every site: it is as far-reaching as an erasure, so it needs the `erase` permission and a user
//! of every site (`sites = ["*"]`). The body names why (`{"reason": "..."}`); the `clock.accept`
//! logbook entry (with the offset accepted) is written before the clock is changed. When the wall
//! clock is trusted already the answer is 409 and nothing is written.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::auth::Permission;
use super::holds::parse_json;
use super::{authorize, check_len, read_body, ApiError, AppState, JSON_BODY_LIMIT};

/// Longest `reason`.
const MAX_REASON: usize = 2000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Accept {
    reason: String,
}

/// `POST /api/v1/clock/accept`.
pub async fn accept(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let user = authorize(&state, &headers, Permission::Erase)?;
    if user.sites.is_some() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "accepting the clock changes retention on every site; it is for users of every site",
        ));
    }
    let body = read_body(&headers, body, JSON_BODY_LIMIT).await?;
    let req: Accept = parse_json(&body)?;
    if req.reason.trim().is_empty() {
        return Err(ApiError::bad_field("reason", "must not be empty"));
    }
    check_len("reason", &req.reason, MAX_REASON)?;
    let status = state.clock.status();
    if status["state"] == "synced" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the wall clock is trusted already; nothing to accept",
        ));
    }
    let offset = status["offset_seconds"].as_f64().unwrap_or(0.0);
    let mut e = crate::wallclock::accept_entry(&user.name, &user.role, offset);
    e.reason = Some(req.reason);
    state.record(e).await?;
    let accepted = state.clock.accept(&user.name);
    Ok((
        StatusCode::OK,
        Json(json!({
            "accepted": accepted.is_some(),
            "offset_seconds": accepted.unwrap_or(0.0),
            "clock": state.clock.status(),
        })),
    )
        .into_response())
}
