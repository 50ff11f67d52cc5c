//! `POST /api/v1/clock/accept`: an operator accepts a wall-clock jump (`crate::wallclock`).
//!
//! Accepting a forward jump lets the next sweep expire everything the new time makes old, across
//! every site: it is as far-reaching as an erasure, so it needs the `erase` permission and a user
//! of every site (`sites = ["*"]`). The body names why (`{"reason": "..."}`). The intent, a
//! `clock.accept` logbook entry (with the offset seen), is written before the clock is changed;
//! then a `clock.accept.outcome` entry (linked to it) says what happened: accepted (and by how
//! much), nothing to accept (the clock was trusted meanwhile: 409), or an error (the accepted
//! state could not be persisted: 500). When the wall clock is trusted already at the start the
//! answer is 409 and nothing is written.

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
    // Intent first (who, why, the offset seen), then the outcome with what happened: the
    // accept is recorded even if it then finds nothing to accept or cannot be made durable.
    let mut intent = crate::wallclock::accept_entry(&user.name, &user.role, offset);
    intent.reason = Some(req.reason);
    intent.text = Some("intent: accept the wall clock as the trusted time".into());
    let intent = state.record(intent).await?;
    let st = state.clone();
    let by = user.name.clone();
    let result = tokio::task::spawn_blocking(move || {
        let accepted = st.clock.accept(&by);
        // Made durable at once: a restart right after must not find the jump again.
        let persisted = match accepted {
            Some(_) => st.clock.persist(st.store.index(), true),
            None => Ok(()),
        };
        (accepted, persisted)
    })
    .await
    .map_err(ApiError::internal)?;
    let mut outcome =
        crate::wallclock::accept_entry(&user.name, &user.role, result.0.unwrap_or(0.0));
    outcome.action = "clock.accept.outcome".into();
    outcome.refers_to = Some(intent.entry.seq);
    outcome.refers_hash = Some(intent.hash.clone());
    let response = match result {
        (Some(accepted), Ok(())) => {
            outcome.text = Some(format!(
                "accepted: {}",
                crate::wallclock::accepted_text(accepted)
            ));
            Ok(accepted)
        }
        (Some(accepted), Err(e)) => {
            tracing::error!(error = %e, "clock: the accepted time could not be persisted");
            outcome.text = Some(format!(
                "error: accepted ({}) but not persisted (see the daemon's log); a restart may \
                 find the jump again",
                crate::wallclock::accepted_text(accepted)
            ));
            Err(ApiError::internal(e))
        }
        (None, _) => {
            outcome.text = Some("nothing to accept: the wall clock was trusted already".into());
            Err(ApiError::new(
                StatusCode::CONFLICT,
                "the wall clock is trusted already; nothing to accept",
            ))
        }
    };
    state.record(outcome).await?;
    let accepted = response?;
    Ok((
        StatusCode::OK,
        Json(json!({
            "accepted": true,
            "offset_seconds": accepted,
            "logbook_seq": intent.entry.seq,
            "clock": state.clock.status(),
        })),
    )
        .into_response())
}
