//! `GET /api/v1/cameras/{id}/export.mp4` and `.../view.mp4`: footage out, logged first.
//!
//! Both stream the same MP4 (see `export`); `export.mp4` is a download to keep or hand over
//! (`Content-Disposition: attachment`), `view.mp4` is playback (`inline`). The role decides which
//! and for which purpose (a technician may view for `technical` only, a privacy officer handle
//! `subject-access` requests). `reason` is required; purposes `police` and `hand-over` also need
//! `recipient` and `reference` (MW 5, WB 7). The logbook entry (who, what range, why, for whom)
//! is synced before the first byte of the response is produced. Every refused request of an
//! authenticated user (403, 400, 404 nothing left) is logged too, with what was asked (MW19
//! art 2). When the stream ends, a second entry that refers to the first records the outcome
//! (`complete` or `aborted`), the bytes sent and the SHA-256 of exactly those bytes, so a
//! hand-over receipt can name the file's hash. A client that stops reading for
//! [`STALL_TIMEOUT`] is dropped.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::auth::Principal;
use super::{Param, 
    authenticate, camera_in_scope, entry, parse_query, parse_range, ApiError, AppState,
    RefusalLogged,
};
use crate::export::{mp4, plan, send_payloads};
use crate::logbook::NewEntry;
use crate::roles::Footage;

/// How long a client may stop reading an export before it is dropped.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Purposes that hand footage to a third party: `recipient` and `reference` are required.
pub const HAND_OVER_PURPOSES: [&str; 2] = ["police", "hand-over"];

/// Query of an export or view.
#[derive(Deserialize, Default)]
pub struct FootageQuery {
    from: Option<String>,
    to: Option<String>,
    reason: Option<String>,
    purpose: Option<String>,
    recipient: Option<String>,
    reference: Option<String>,
}

/// `GET /api/v1/cameras/{id}/export.mp4`.
pub async fn export(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Param(id): Param,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    footage(state, headers, id, raw, Footage::Export).await
}

/// `GET /api/v1/cameras/{id}/view.mp4`.
pub async fn view(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Param(id): Param,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    footage(state, headers, id, raw, Footage::View).await
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// At most `n` bytes of `s`, cut at a character boundary (what a refused request asked for is
/// logged, but never unbounded).
pub fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_owned();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Logs a refused footage request with what was asked, and marks the response as logged.
async fn refuse(
    state: &Arc<AppState>,
    user: &Principal,
    kind: Footage,
    id: &str,
    raw: Option<&str>,
    err: ApiError,
) -> Response {
    // Only a camera the user may see gives the entry a site; anything else is for `*` users.
    let sites: Vec<String> = state
        .camera_site(id)
        .filter(|s| user.covers_site(s))
        .map(|s| vec![s.to_owned()])
        .unwrap_or_default();
    let q: FootageQuery = parse_query(raw).unwrap_or_default();
    let mut e = entry(
        user,
        &format!("{}.refused", kind.name()),
        json!({
            "camera": truncate(id, 256),
            "query": raw.map(|r| truncate(r, 256)),
            "status": err.status().as_u16(),
        }),
    );
    e.reason = non_empty(q.reason).map(|r| truncate(&r, 1024));
    e.purpose = non_empty(q.purpose).map(|r| truncate(&r, 64));
    e.recipient = non_empty(q.recipient).map(|r| truncate(&r, 256));
    e.reference = non_empty(q.reference).map(|r| truncate(&r, 256));
    e.text = Some(truncate(err.message(), 512));
    e.sites = sites;
    if let Err(le) = state.record(e).await {
        tracing::error!(error = ?le, "could not log a refused footage request");
        return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "logbook unavailable")
            .into_response();
    }
    let mut resp = err.into_response();
    resp.extensions_mut().insert(RefusalLogged);
    resp
}

async fn footage(
    state: Arc<AppState>,
    headers: HeaderMap,
    id: String,
    raw: Option<String>,
    kind: Footage,
) -> Result<Response, ApiError> {
    let user = authenticate(&state, &headers)?;
    match prepare(&state, &user, &id, raw.as_deref(), kind).await {
        Ok(p) => send(state, user, id, kind, p).await,
        Err(err) => Ok(refuse(&state, &user, kind, &id, raw.as_deref(), err).await),
    }
}

struct Prepared {
    q: FootageQuery,
    from: crate::time::Time90k,
    to: crate::time::Time90k,
    site: String,
    plan: crate::export::Plan,
    head: Bytes,
}

/// Everything that can refuse the request, in the order 403, 400, 404.
async fn prepare(
    state: &Arc<AppState>,
    user: &Arc<Principal>,
    id: &str,
    raw: Option<&str>,
    kind: Footage,
) -> Result<Prepared, ApiError> {
    if !user.perms.any_footage(kind) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("role {} may not {} footage", user.role, kind.name()),
        ));
    }
    let q: FootageQuery = parse_query(raw)?;
    let purpose = non_empty(q.purpose.clone());
    if !user.may_footage(kind, purpose.as_deref()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "role {} may {} footage only for a permitted purpose; {} is not one",
                user.role,
                kind.name(),
                purpose
                    .as_deref()
                    .map_or("no purpose".into(), |p| format!("{:?}", truncate(p, 64)))
            ),
        ));
    }
    let site = camera_in_scope(state, user, id)?.site.clone();
    non_empty(q.reason.clone()).ok_or_else(|| ApiError::bad_field("reason", "is required"))?;
    if let Some(p) = purpose
        .as_deref()
        .filter(|p| HAND_OVER_PURPOSES.contains(p))
    {
        for (field, v) in [("recipient", &q.recipient), ("reference", &q.reference)] {
            if non_empty(v.clone()).is_none() {
                return Err(ApiError::bad_field(
                    field,
                    format!("is required for purpose {p:?} (who receives the copy, under which case)"),
                ));
            }
        }
    }
    let (from, to) = parse_range(q.from.as_deref(), q.to.as_deref())?;

    let st = state.clone();
    let cam = id.to_owned();
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
    Ok(Prepared {
        q,
        from,
        to,
        site,
        plan,
        head,
    })
}

async fn send(
    state: Arc<AppState>,
    user: Arc<Principal>,
    id: String,
    kind: Footage,
    p: Prepared,
) -> Result<Response, ApiError> {
    let Prepared {
        q,
        from,
        to,
        site,
        plan,
        head,
    } = p;
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
    e.reason = non_empty(q.reason);
    e.purpose = non_empty(q.purpose);
    e.recipient = non_empty(q.recipient);
    e.reference = non_empty(q.reference);
    e.sites = vec![site.clone()];
    let logged = state.record(e).await?;

    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    let st = state.clone();
    let camera = id.clone();
    let rt = tokio::runtime::Handle::current();
    let (seq, hash) = (logged.entry.seq, logged.hash.clone());
    let completion = {
        let user = user.clone();
        move |outcome: &str, sent: u64, sha: String| {
            let mut c: NewEntry = entry(
                &user,
                &format!("{}.outcome", kind.name()),
                json!({
                    "camera": camera,
                    "outcome": outcome,
                    "bytes_sent": sent,
                    "bytes_planned": total,
                    "sha256": sha,
                }),
            );
            c.refers_to = Some(seq);
            c.refers_hash = Some(hash);
            c.sites = vec![site];
            c
        }
    };
    tokio::task::spawn_blocking(move || {
        let mut sha = Sha256::new();
        let mut sent = 0u64;
        let mut gone = false;
        // Hands one chunk to the connection, waiting at most STALL_TIMEOUT for room.
        let mut push = |b: Bytes| -> bool {
            let n = b.len() as u64;
            let chunk = b.clone();
            match rt.block_on(tokio::time::timeout(STALL_TIMEOUT, tx.send(Ok(b)))) {
                Ok(Ok(())) => {
                    sha.update(&chunk);
                    sent += n;
                    true
                }
                Ok(Err(_)) => {
                    gone = true;
                    false
                }
                Err(_) => {
                    tracing::warn!(camera = %id, "export dropped: the client stopped reading");
                    gone = true;
                    false
                }
            }
        };
        let mut failed = !push(head);
        if !failed {
            if let Err(err) = send_payloads(&st.store, &plan, &mut push) {
                tracing::error!(camera = %id, error = %err, "export stopped: stored footage failed its check");
                failed = true;
                let _ = tx.blocking_send(Err(std::io::Error::other("stored footage failed its check")));
            }
        }
        drop(push);
        let outcome = if failed || gone || sent != total {
            "aborted"
        } else {
            "complete"
        };
        let c = completion(outcome, sent, hex::encode(sha.finalize()));
        match st.logbook.append(st.store.index(), c) {
            Ok(_) => {
                st.metrics.logbook_entries.inc();
            }
            Err(e) => tracing::error!(error = %e, "could not log an export's outcome"),
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let disposition = format!(
        "{}; filename=\"{}_{}.mp4\"",
        if kind == Footage::Export {
            "attachment"
        } else {
            "inline"
        },
        logged
            .entry
            .body
            .object
            .get("camera")
            .and_then(|c| c.as_str())
            .unwrap_or("camera"),
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
