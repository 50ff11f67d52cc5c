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
use super::{
    authenticate, camera_in_scope, check_len, entry, log_refusal, parse_query, parse_range,
    ApiError, AppState, Param, MAX_REASON, MAX_REFERENCE,
};
use crate::export::{mp4, plan, send_payloads};
use crate::logbook::NewEntry;
use crate::roles::Footage;

/// How long a client may stop reading an export before it is dropped.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Purposes that hand footage to a third party: `recipient` and `reference` are required.
pub const HAND_OVER_PURPOSES: [&str; 2] = ["police", "hand-over"];

/// The purposes a look at footage may name (none is an incident look by a role that may look
/// for any purpose). A closed list, so that `Police` or `politie` cannot dodge the hand-over
/// rules.
pub const PURPOSES: [&str; 5] = [
    "incident",
    "technical",
    "subject-access",
    "police",
    "hand-over",
];

/// The longest range of one export or view.
pub const MAX_RANGE_SECS: i64 = 24 * 3600;

/// Exports and views streaming at once; more are refused (503) until one ends. Each holds a
/// blocking thread while it runs.
pub const MAX_CONCURRENT: usize = 32;

static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_CONCURRENT);

/// Exports and views one user may have streaming at once (so a few slow readers of one account
/// cannot take every slot).
pub const MAX_PER_USER: usize = 4;

/// One of a user's streaming slots; given back when dropped.
struct UserSlot(String);

fn user_slots() -> &'static std::sync::Mutex<std::collections::HashMap<String, usize>> {
    static T: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, usize>>> =
        std::sync::LazyLock::new(Default::default);
    &T
}

impl UserSlot {
    fn take(user: &str) -> Option<UserSlot> {
        let mut t = user_slots().lock().unwrap_or_else(|p| p.into_inner());
        let n = t.entry(user.to_owned()).or_insert(0);
        if *n >= MAX_PER_USER {
            return None;
        }
        *n += 1;
        Some(UserSlot(user.to_owned()))
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut t = user_slots().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = t.get_mut(&self.0) {
            *n -= 1;
            if *n == 0 {
                t.remove(&self.0);
            }
        }
    }
}

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
    e.sites = sites;
    log_refusal(state, user, e, err).await
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
    slot: (tokio::sync::SemaphorePermit<'static>, UserSlot),
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
    if let Some(p) = purpose.as_deref().filter(|p| !PURPOSES.contains(p)) {
        return Err(ApiError::bad_field(
            "purpose",
            format!(
                "{:?} is not a purpose; one of {}",
                truncate(p, 64),
                PURPOSES.join(", ")
            ),
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
                    format!(
                        "is required for purpose {p:?} (who receives the copy, under which case)"
                    ),
                ));
            }
        }
    }
    // A copy for someone else is a hand-over, whatever the purpose says.
    if non_empty(q.recipient.clone()).is_some() && non_empty(q.reference.clone()).is_none() {
        return Err(ApiError::bad_field(
            "reference",
            "is required when the footage goes to a recipient (the case it is handed over for)",
        ));
    }
    for (field, v, max) in [
        ("reason", &q.reason, MAX_REASON),
        ("recipient", &q.recipient, MAX_REFERENCE),
        ("reference", &q.reference, MAX_REFERENCE),
    ] {
        check_len(field, v.as_deref().unwrap_or(""), max)?;
    }
    let (from, to) = parse_range(q.from.as_deref(), q.to.as_deref())?;
    if to.0 - from.0 > MAX_RANGE_SECS * crate::time::TICKS_PER_SEC {
        return Err(ApiError::bad_field(
            "to",
            "an export or view covers at most 24 hours; ask for several",
        ));
    }

    let user_slot = UserSlot::take(&user.name).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("you have {MAX_PER_USER} exports and views running; wait for one to end"),
        )
    })?;
    let slot = SLOTS.try_acquire().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_CONCURRENT} exports and views are running; try again shortly"),
        )
    })?;
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
        slot: (slot, user_slot),
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
        mut plan,
        head,
        slot,
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
    let finish = {
        let user = user.clone();
        let st = state.clone();
        move |outcome: &'static str, sent: u64, sha: String| {
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
            match st.logbook.append(st.store.index(), c) {
                Ok(_) => {
                    st.metrics.logbook_entries.inc();
                }
                Err(e) => tracing::error!(error = %e, "could not log an export's outcome"),
            }
        }
    };
    // The producer reads one verified segment at a time; it gives up when the connection has
    // taken nothing for STALL_TIMEOUT (the serving loop cuts such a connection too).
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let send = |item: Result<Bytes, std::io::Error>| -> bool {
            match rt.block_on(tokio::time::timeout(STALL_TIMEOUT, tx.send(item))) {
                Ok(Ok(())) => true,
                Ok(Err(_)) => false,
                Err(_) => {
                    tracing::warn!(camera = %id, "export dropped: the client stopped reading");
                    false
                }
            }
        };
        if send(Ok(head)) {
            if let Err(err) = send_payloads(&st.store, &mut plan, |b| send(Ok(b))) {
                tracing::error!(camera = %id, error = %err, "export stopped: stored footage failed its check");
                send(Err(std::io::Error::other(
                    "stored footage failed its check",
                )));
            }
        }
    });
    let stream = Delivery {
        rx,
        sha: Sha256::new(),
        sent: 0,
        total,
        failed: false,
        finish: Some(Box::new(finish)),
    };
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

/// What an export's outcome entry records, once the response body is done with.
type Finish = Box<dyn FnOnce(&'static str, u64, String) + Send>;

/// The response body of an export: passes the producer's chunks to hyper and counts and hashes
/// exactly what hyper took, so the outcome entry names the bytes that went to the connection.
/// When hyper drops it (all sent, the client gone, or the connection cut), the outcome is
/// written: `complete` only when every planned byte went out.
struct Delivery {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    sha: Sha256,
    sent: u64,
    total: u64,
    failed: bool,
    finish: Option<Finish>,
}

impl futures::Stream for Delivery {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let this = &mut *self;
        match this.rx.poll_recv(cx) {
            std::task::Poll::Ready(Some(Ok(b))) => {
                this.sha.update(&b);
                this.sent += b.len() as u64;
                std::task::Poll::Ready(Some(Ok(b)))
            }
            std::task::Poll::Ready(Some(Err(e))) => {
                this.failed = true;
                std::task::Poll::Ready(Some(Err(e)))
            }
            other => other,
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        let Some(finish) = self.finish.take() else {
            return;
        };
        let outcome = if !self.failed && self.sent == self.total {
            "complete"
        } else {
            "aborted"
        };
        let sha = hex::encode(std::mem::take(&mut self.sha).finalize());
        let sent = self.sent;
        // The append syncs: never on the async threads.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(move || finish(outcome, sent, sha));
            }
            Err(_) => finish(outcome, sent, sha),
        }
    }
}
