//! `GET /api/v1/cameras/{id}/export.mp4` and `.../view.mp4`: footage out, logged first.
//!
//! Both stream the same MP4 (see `export`); `export.mp4` is a download to keep or hand over
//! (`Content-Disposition: attachment`), `view.mp4` is playback (`inline`). The role decides which
//! and for which purpose (a technician may view for `technical` only, a privacy officer handle
//! `subject-access` requests). `reason` is required. The logbook entry (who, what range, why,
//! for whom) is synced before the first byte of the response is produced.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::{authenticate, camera_in_scope, entry, parse_range, ApiError, AppState};
use crate::export::{mp4, plan, send_payloads};
use crate::roles::Footage;

/// Query of an export or view.
#[derive(Deserialize)]
pub struct FootageQuery {
    from: Option<String>,
    to: Option<String>,
    reason: Option<String>,
    purpose: Option<String>,
    recipient: Option<String>,
}

/// `GET /api/v1/cameras/{id}/export.mp4`.
pub async fn export(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<FootageQuery>,
) -> Result<Response, ApiError> {
    footage(state, headers, id, q, Footage::Export).await
}

/// `GET /api/v1/cameras/{id}/view.mp4`.
pub async fn view(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<FootageQuery>,
) -> Result<Response, ApiError> {
    footage(state, headers, id, q, Footage::View).await
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

async fn footage(
    state: Arc<AppState>,
    headers: HeaderMap,
    id: String,
    q: FootageQuery,
    kind: Footage,
) -> Result<Response, ApiError> {
    let user = authenticate(&state, &headers)?;
    let purpose = non_empty(q.purpose);
    if !user.perms.any_footage(kind) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("role {} may not {} footage", user.role, kind.name()),
        ));
    }
    if !user.may_footage(kind, purpose.as_deref()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "role {} may {} footage only for a permitted purpose; {} is not one",
                user.role,
                kind.name(),
                purpose
                    .as_deref()
                    .map_or("no purpose".into(), |p| format!("{p:?}"))
            ),
        ));
    }
    camera_in_scope(&state, &user, &id)?;
    let reason = non_empty(q.reason).ok_or_else(|| ApiError::bad_field("reason", "is required"))?;
    let (from, to) = parse_range(q.from.as_deref(), q.to.as_deref())?;

    let st = state.clone();
    let cam = id.clone();
    let (plan, head) = tokio::task::spawn_blocking(move || {
        let p = plan(&st.store, &cam, from, to)?;
        let h = if p.is_empty() {
            Bytes::new()
        } else {
            mp4::header(&p).map_err(|e| crate::store::StoreError::Io {
                op: "build MP4 header",
                path: st.store.root().to_owned(),
                source: std::io::Error::other(e.to_string()),
            })?
        };
        Ok::<_, crate::store::StoreError>((p, h))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    if plan.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("nothing of camera {id:?} is recorded in that range (any more)"),
        ));
    }
    let total = head.len() as u64 + plan.payload_len();

    // The logbook first: nothing leaves before this entry is durable.
    let mut e = entry(
        &user,
        kind.name(),
        json!({
            "camera": id,
            "from": from.to_rfc3339(),
            "to": to.to_rfc3339(),
            "clip_start": plan.start.to_rfc3339(),
            "clip_end": plan.end.to_rfc3339(),
            "frames": plan.samples.len(),
            "bytes": total,
        }),
    );
    e.reason = Some(reason);
    e.purpose = purpose;
    e.recipient = non_empty(q.recipient);
    let logged = state.record(e).await?;

    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    let st = state.clone();
    let camera = id.clone();
    tokio::task::spawn_blocking(move || {
        if tx.blocking_send(Ok(head)).is_err() {
            return;
        }
        let r = send_payloads(&st.store, &plan, |b| tx.blocking_send(Ok(b)).is_ok());
        if let Err(err) = r {
            tracing::error!(camera = %camera, error = %err, "export stopped: stored footage failed its check");
            let _ = tx.blocking_send(Err(std::io::Error::other(err.to_string())));
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let disposition = format!(
        "{}; filename=\"{id}_{}.mp4\"",
        if kind == Footage::Export {
            "attachment"
        } else {
            "inline"
        },
        from.to_rfc3339().replace(':', "")
    );
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp4"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&logged.entry.seq.to_string()) {
        h.insert("x-holdfast-logbook-seq", v);
    }
    Ok(resp)
}
