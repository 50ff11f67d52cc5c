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
use super::footage_ids::{ids, new_id, Held, EXPORT_LIFE, VIEW_IDLE};
use super::holds::parse_json;
use super::range::{self, Ranged};
use super::{
    authenticate, camera_in_scope, check_len, entry, log_refusal, parse_query, parse_range,
    read_body, ApiError, AppState, Param, MAX_REASON, MAX_REFERENCE,
};
use crate::export::{plan, send_payloads, Layout};
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

/// Query of an export or view (`view`/`export`: the id of one made by a POST).
#[derive(Deserialize, Default, Clone)]
pub struct FootageQuery {
    from: Option<String>,
    to: Option<String>,
    reason: Option<String>,
    purpose: Option<String>,
    recipient: Option<String>,
    reference: Option<String>,
    view: Option<String>,
    export: Option<String>,
}

/// JSON body of `POST .../views` and `POST .../exports`: the fields of the GET's query.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FootageBody {
    from: Option<String>,
    to: Option<String>,
    reason: Option<String>,
    purpose: Option<String>,
    recipient: Option<String>,
    reference: Option<String>,
}

impl From<FootageBody> for FootageQuery {
    fn from(b: FootageBody) -> Self {
        FootageQuery {
            from: b.from,
            to: b.to,
            reason: b.reason,
            purpose: b.purpose,
            recipient: b.recipient,
            reference: b.reference,
            view: None,
            export: None,
        }
    }
}

/// What a camera id in a URL path segment is escaped with: all but the unreserved characters.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Largest body of `POST .../views` and `POST .../exports`, in bytes.
pub const POST_BODY_LIMIT: usize = 16 * 1024;

/// `GET /api/v1/cameras/{id}/export.mp4`.
pub async fn export(
    State(state): State<Arc<AppState>>,
    method: axum::http::Method,
    headers: HeaderMap,
    Param(id): Param,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let head = method == axum::http::Method::HEAD;
    footage(state, headers, id, raw, Footage::Export, head).await
}

/// `GET /api/v1/cameras/{id}/view.mp4`.
pub async fn view(
    State(state): State<Arc<AppState>>,
    method: axum::http::Method,
    headers: HeaderMap,
    Param(id): Param,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let head = method == axum::http::Method::HEAD;
    footage(state, headers, id, raw, Footage::View, head).await
}

/// The view or export id a footage GET names (`view=` on `view.mp4`, `export=` on
/// `export.mp4`), if its query parses; such a GET writes no logbook entry. Anything else is
/// footage by range: logged, and so not "safe" for a cookie without its CSRF token
/// (`session::csrf_guard`).
pub fn held_id_of(raw: Option<&str>, kind: Footage) -> Option<String> {
    parse_query::<FootageQuery>(raw)
        .ok()
        .and_then(|q| match kind {
            Footage::View => q.view,
            Footage::Export => q.export,
        })
}

/// `POST /api/v1/cameras/{id}/views`: a view id (logged once) for ranged playback.
pub async fn post_view(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Param(id): Param,
    body: Body,
) -> Result<Response, ApiError> {
    create(state, headers, id, body, Footage::View).await
}

/// `POST /api/v1/cameras/{id}/exports`: an export id with the file's size and SHA-256.
pub async fn post_export(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Param(id): Param,
    body: Body,
) -> Result<Response, ApiError> {
    create(state, headers, id, body, Footage::Export).await
}

/// `GET /api/v1/exports/{id}`: the receipt of an export id, for the user who made it.
pub async fn get_export(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Param(id): Param,
) -> Result<Response, ApiError> {
    let user = authenticate(&state, &headers)?;
    if !user.perms.any_footage(Footage::Export) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("role {} may not export footage", user.role),
        ));
    }
    let held = ids()
        .get(&id, Footage::Export, &user.name, None)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such export"))?;
    Ok(axum::Json(held.receipt.clone()).into_response())
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

/// What a refused request asked: its query string or its body (shown cut), and the fields.
struct Asked<'a> {
    /// `query` or `body`.
    shown_as: &'static str,
    raw: Option<&'a str>,
    q: FootageQuery,
}

impl<'a> Asked<'a> {
    fn query(raw: Option<&'a str>) -> Self {
        Asked {
            shown_as: "query",
            raw,
            q: parse_query(raw).unwrap_or_default(),
        }
    }
}

/// Logs a refused footage request with what was asked, and marks the response as logged.
async fn refuse(
    state: &Arc<AppState>,
    user: &Principal,
    kind: Footage,
    id: &str,
    asked: Asked<'_>,
    err: ApiError,
) -> Response {
    // Only a camera the user may see gives the entry a site; anything else is for `*` users.
    let sites: Vec<String> = state
        .camera_site(id)
        .filter(|s| user.covers_site(s))
        .map(|s| vec![s.to_owned()])
        .unwrap_or_default();
    let q = asked.q;
    let mut object = json!({
        "camera": truncate(id, 256),
        "status": err.status().as_u16(),
    });
    object[asked.shown_as] = asked.raw.map(|r| truncate(r, 256)).into();
    let mut e = entry(user, &format!("{}.refused", kind.name()), object);
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
    head: bool,
) -> Result<Response, ApiError> {
    let user = authenticate(&state, &headers)?;
    if let Some(held_id) = held_id_of(raw.as_deref(), kind) {
        let asked = (raw.as_deref(), held_id.as_str(), head);
        return Ok(by_id(&state, &headers, &user, &id, asked, kind).await);
    }
    let asked = || Asked::query(raw.as_deref());
    let q: FootageQuery = match parse_query(raw.as_deref()) {
        Ok(q) => q,
        Err(err) => {
            // The role is judged before the query (403 before 400).
            let err = footage_allowed(&user, kind).err().unwrap_or(err);
            return Ok(refuse(&state, &user, kind, &id, asked(), err).await);
        }
    };
    match prepare(&state, &user, &id, &q, kind, true).await {
        Ok(p) => send(state, user, id, kind, q, p, &headers).await,
        Err(err) => Ok(refuse(&state, &user, kind, &id, asked(), err).await),
    }
}

/// 403 unless the user's role may view or export footage for some purpose.
fn footage_allowed(user: &Principal, kind: Footage) -> Result<(), ApiError> {
    if !user.perms.any_footage(kind) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("role {} may not {} footage", user.role, kind.name()),
        ));
    }
    Ok(())
}

/// What a request for footage asked, checked.
struct Checked {
    from: crate::time::Time90k,
    to: crate::time::Time90k,
    site: String,
}

/// The checks of a request for footage, in the order 403, 400, 404 (no camera).
fn check(
    state: &Arc<AppState>,
    user: &Arc<Principal>,
    id: &str,
    q: &FootageQuery,
    kind: Footage,
) -> Result<Checked, ApiError> {
    footage_allowed(user, kind)?;
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
    Ok(Checked { from, to, site })
}

/// A streaming slot of the user's and one of all (503 when either is taken).
type Slot = (tokio::sync::SemaphorePermit<'static>, UserSlot);

fn take_slots(user: &Principal) -> Result<Slot, ApiError> {
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
    Ok((slot, user_slot))
}

/// Plans `[from, to)` of camera `id` and builds its layout (404 when nothing is recorded).
async fn plan_layout(
    state: &Arc<AppState>,
    id: &str,
    from: crate::time::Time90k,
    to: crate::time::Time90k,
    keep_files: bool,
) -> Result<Layout, ApiError> {
    let st = state.clone();
    let cam = id.to_owned();
    let layout = tokio::task::spawn_blocking(move || {
        let p = plan(&st.store, &cam, from, to)?;
        if p.is_empty() {
            return Ok(None);
        }
        Layout::new(p, keep_files)
            .map(Some)
            .map_err(|e| crate::store::StoreError::Io {
                op: "build MP4 header",
                path: st.store.root().to_owned(),
                source: std::io::Error::other(e.to_string()),
            })
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    layout.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("nothing of camera {id:?} is recorded in that range (any more)"),
        )
    })
}

struct Prepared {
    from: crate::time::Time90k,
    to: crate::time::Time90k,
    site: String,
    layout: Layout,
    slot: Slot,
}

/// Everything that can refuse the request: the checks (403, 400, 404 for an unknown camera), then
/// the streaming slots (503), then the plan (404 when nothing is recorded in the range), so that
/// the slot is held before the bucket files are read.
async fn prepare(
    state: &Arc<AppState>,
    user: &Arc<Principal>,
    id: &str,
    q: &FootageQuery,
    kind: Footage,
    keep_files: bool,
) -> Result<Prepared, ApiError> {
    let Checked { from, to, site } = check(state, user, id, q, kind)?;
    let slot = take_slots(user)?;
    let layout = plan_layout(state, id, from, to, keep_files).await?;
    Ok(Prepared {
        from,
        to,
        site,
        layout,
        slot,
    })
}

/// The file name of a clip of `camera` from `from`.
fn file_name(camera: &str, from: crate::time::Time90k) -> String {
    format!("{camera}_{}.mp4", from.to_rfc3339().replace(':', ""))
}

/// The `Range` and `If-Range` of a request judged against a file of `len` bytes.
fn judge_range(headers: &HeaderMap, etag: Option<&str>, len: u64) -> Ranged {
    let h = |name| headers.get(name).and_then(|v| v.to_str().ok());
    range::judge(h(header::RANGE), h(header::IF_RANGE), etag, len)
}

/// 416 with `Content-Range: bytes */len`.
fn unsatisfiable(len: u64) -> Response {
    let mut resp = ApiError::new(
        StatusCode::RANGE_NOT_SATISFIABLE,
        format!("range: the file has {len} bytes"),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
        resp.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    resp.headers_mut()
        .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    resp
}

/// The outcome entry of a delivery, written when its body is done with.
#[allow(clippy::too_many_arguments)]
fn outcome(
    state: &Arc<AppState>,
    user: &Arc<Principal>,
    kind: Footage,
    camera: String,
    site: String,
    refers: (u64, String),
    planned: u64,
    range: Option<String>,
) -> Finish {
    let user = user.clone();
    let st = state.clone();
    Box::new(move |outcome: &'static str, sent: u64, sha: String| {
        let mut object = json!({
            "camera": camera,
            "outcome": outcome,
            "bytes_sent": sent,
            "bytes_planned": planned,
            "sha256": sha,
        });
        if let Some(r) = range {
            object["range"] = r.into();
        }
        let mut c: NewEntry = entry(&user, &format!("{}.outcome", kind.name()), object);
        c.refers_to = Some(refers.0);
        c.refers_hash = Some(refers.1);
        c.sites = vec![site];
        match st.logbook.append(st.store.index(), c) {
            Ok(_) => {
                st.metrics.logbook_entries.inc();
            }
            Err(e) => tracing::error!(error = %e, "could not log an export's outcome"),
        }
    })
}

/// What a delivery sends.
enum Source {
    /// The whole file of a plan that is used once (its bucket files closed as it goes).
    Whole(Layout),
    /// Bytes `[start, end)` of a layout.
    Range(Arc<Layout>, u64, u64),
}

/// The response body of a delivery: a producer thread reads one verified segment at a time and
/// gives up when the connection has taken nothing for [`STALL_TIMEOUT`] (the serving loop cuts
/// such a connection too). The slot is held until the producer ends.
fn deliver(
    state: &Arc<AppState>,
    camera: String,
    source: Source,
    len: u64,
    slot: Slot,
    finish: Option<Finish>,
) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    let st = state.clone();
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let send = |item: Result<Bytes, std::io::Error>| -> bool {
            match rt.block_on(tokio::time::timeout(STALL_TIMEOUT, tx.send(item))) {
                Ok(Ok(())) => true,
                Ok(Err(_)) => false,
                Err(_) => {
                    tracing::warn!(camera = %camera, "export dropped: the client stopped reading");
                    false
                }
            }
        };
        let result = match source {
            Source::Whole(mut layout) => {
                if send(Ok(layout.head.clone())) {
                    send_payloads(&st.store, &mut layout.plan, |b| send(Ok(b)))
                } else {
                    Ok(())
                }
            }
            Source::Range(layout, start, end) => {
                layout.send_range(&st.store, start, end, |b| send(Ok(b)))
            }
        };
        if let Err(err) = result {
            tracing::error!(camera = %camera, error = %err, "export stopped: stored footage failed its check");
            send(Err(std::io::Error::other(
                "stored footage failed its check",
            )));
        }
    });
    Body::from_stream(Delivery {
        rx,
        sha: Sha256::new(),
        sent: 0,
        total: len,
        failed: false,
        finish,
    })
}

/// The headers of an MP4 response: 200 or 206 (with `Content-Range`), length, type,
/// disposition, `Accept-Ranges`, the entity tag of an id and the logbook entry's seq.
fn mp4_response(
    body: Body,
    part: Option<(u64, u64)>,
    total: u64,
    disposition: &str,
    etag: Option<&str>,
    seq: u64,
) -> Response {
    let mut resp = body.into_response();
    let len = match part {
        Some((start, end)) => {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{total}", end - 1)) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            end - start
        }
        None => total,
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp4"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Some(v) = etag.and_then(|t| HeaderValue::from_str(t).ok()) {
        h.insert(header::ETAG, v);
    }
    h.insert("x-holdfast-logbook-seq", HeaderValue::from(seq));
    resp
}

fn disposition(kind: Footage, name: &str) -> String {
    format!(
        "{}; filename=\"{name}\"",
        if kind == Footage::Export {
            "attachment"
        } else {
            "inline"
        }
    )
}

/// A GET without an id: its own logbook entry (synced) before the first byte, its own outcome.
async fn send(
    state: Arc<AppState>,
    user: Arc<Principal>,
    id: String,
    kind: Footage,
    q: FootageQuery,
    p: Prepared,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let Prepared {
        from,
        to,
        site,
        layout,
        slot,
    } = p;
    let total = layout.len();
    let part = match judge_range(headers, None, total) {
        Ranged::Unsatisfiable => return Ok(unsatisfiable(total)),
        Ranged::Whole => None,
        Ranged::Part { start, end } => Some((start, end + 1)),
    };

    // The logbook first: nothing leaves before this entry is durable.
    let mut object = json!({
        "camera": id,
        "from": from.to_rfc3339(),
        "to": to.to_rfc3339(),
        "clip_start": layout.plan.start.to_rfc3339(),
        "clip_end": layout.plan.end.to_rfc3339(),
        "frames": layout.frames,
        "bytes": total,
    });
    let range = part.map(|(a, b)| format!("bytes {a}-{}/{total}", b - 1));
    if let Some(r) = &range {
        object["range"] = r.clone().into();
    }
    let mut e = entry(&user, kind.name(), object);
    e.reason = non_empty(q.reason);
    e.purpose = non_empty(q.purpose);
    e.recipient = non_empty(q.recipient);
    e.reference = non_empty(q.reference);
    e.sites = vec![site.clone()];
    let logged = state.record(e).await?;

    let (source, planned) = match part {
        None => (Source::Whole(layout), total),
        Some((a, b)) => (Source::Range(Arc::new(layout), a, b), b - a),
    };
    let finish = outcome(
        &state,
        &user,
        kind,
        id.clone(),
        site,
        (logged.entry.seq, logged.hash.clone()),
        planned,
        range,
    );
    let body = deliver(&state, id.clone(), source, planned, slot, Some(finish));
    Ok(mp4_response(
        body,
        part,
        total,
        &disposition(kind, &file_name(&id, from)),
        None,
        logged.entry.seq,
    ))
}

/// A GET of a view or export id: exactly the bytes of the layout fixed when it was made, with
/// no new logbook entry (an export's complete download writes its outcome entry).
async fn by_id(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    user: &Arc<Principal>,
    id: &str,
    (raw, held_id, head): (Option<&str>, &str, bool),
    kind: Footage,
) -> Response {
    let refused = |err| refuse(state, user, kind, id, Asked::query(raw), err);
    let Some(held) = ids().get(held_id, kind, &user.name, Some(id)) else {
        return refused(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no such {}", kind.name()),
        ))
        .await;
    };
    // The role and the sites as they are now (a reload may have changed them).
    if !user.may_footage(kind, held.purpose.as_deref()) {
        return refused(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "role {} may no longer {} this footage",
                user.role,
                kind.name()
            ),
        ))
        .await;
    }
    if let Err(err) = camera_in_scope(state, user, id) {
        return refused(err).await;
    }
    let etag = format!("\"{held_id}\"");
    let total = held.layout.len();
    let part = match judge_range(headers, Some(&etag), total) {
        Ranged::Unsatisfiable => return unsatisfiable(total),
        Ranged::Whole => None,
        Ranged::Part { start, end } => Some((start, end + 1)),
    };
    let (start, end) = part.unwrap_or((0, total));
    // Footage erased or expired since the id was made: refused before a byte is sent (the
    // payload reads check again, so a change during the transfer cuts it).
    let st = state.clone();
    let layout = held.layout.clone();
    let stored =
        tokio::task::spawn_blocking(move || layout.still_stored(&st.store, start, end)).await;
    match stored {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(camera = %id, error = %e, "footage of an id changed since it was made");
            return refused(ApiError::new(
                StatusCode::GONE,
                format!(
                    "the footage of this {} changed since it was made (erased or expired); \
                     make a new one",
                    kind.name()
                ),
            ))
            .await;
        }
        Err(e) => return ApiError::internal(e).into_response(),
    }
    let slot = match take_slots(user) {
        Ok(s) => s,
        Err(err) => return refused(err).await,
    };
    // A HEAD sends no body: no download happened, so no outcome entry either.
    let finish = (kind == Footage::Export && part.is_none() && !head).then(|| {
        outcome(
            state,
            user,
            kind,
            id.to_owned(),
            held.site.clone(),
            held.logbook.clone(),
            total,
            None,
        )
    });
    let body = deliver(
        state,
        id.to_owned(),
        Source::Range(held.layout.clone(), start, end),
        end - start,
        slot,
        finish,
    );
    mp4_response(
        body,
        part,
        total,
        &disposition(kind, &held.file_name),
        Some(&etag),
        held.logbook.0,
    )
}

/// `POST .../views` and `POST .../exports`: the same checks as the GET (refusals logged the
/// same way), then the layout, for an export its SHA-256 (every payload read and checked once),
/// then the logbook entry, then the id.
async fn create(
    state: Arc<AppState>,
    headers: HeaderMap,
    id: String,
    body: Body,
    kind: Footage,
) -> Result<Response, ApiError> {
    let user = authenticate(&state, &headers)?;
    let none = || Asked {
        shown_as: "body",
        raw: None,
        q: FootageQuery::default(),
    };
    if let Err(err) = footage_allowed(&user, kind) {
        return Ok(refuse(&state, &user, kind, &id, none(), err).await);
    }
    let raw = match read_body(&headers, body, POST_BODY_LIMIT).await {
        Ok(b) => b,
        Err(err) => return Ok(refuse(&state, &user, kind, &id, none(), err).await),
    };
    let shown = String::from_utf8_lossy(&raw).into_owned();
    let parsed: Result<FootageBody, _> = parse_json(&raw);
    let q: FootageQuery = match parsed {
        Ok(b) => b.into(),
        Err(err) => {
            let asked = Asked {
                shown_as: "body",
                raw: Some(&shown),
                q: FootageQuery::default(),
            };
            return Ok(refuse(&state, &user, kind, &id, asked, err).await);
        }
    };
    match make(&state, &user, &id, &q, kind).await {
        Ok(r) => Ok(r),
        Err(err)
            if err.status().is_server_error()
                && err.status() != StatusCode::SERVICE_UNAVAILABLE =>
        {
            Err(err)
        }
        Err(err) => {
            let asked = Asked {
                shown_as: "body",
                raw: Some(&shown),
                q,
            };
            Ok(refuse(&state, &user, kind, &id, asked, err).await)
        }
    }
}

/// Sets its flag when dropped (a request future that ends, finished or abandoned).
struct MarkOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for MarkOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn make(
    state: &Arc<AppState>,
    user: &Arc<Principal>,
    id: &str,
    q: &FootageQuery,
    kind: Footage,
) -> Result<Response, ApiError> {
    let p = prepare(state, user, id, q, kind, false).await?;
    let layout = Arc::new(p.layout);
    let size = layout.len();
    let name = file_name(id, p.from);
    if !ids().has_room(&user.name, kind, layout.mem_size()) {
        return Err(no_room());
    }
    let slot = p.slot;
    // An export's hash: the whole file, its payloads read and checked once; nothing leaves.
    let sha = if kind == Footage::Export {
        let st = state.clone();
        let l = layout.clone();
        // The read holds the streaming slots until it ends, and stops early when the request
        // is gone (the client closed the connection: this future is dropped).
        let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let _mark = MarkOnDrop(gone.clone());
        let hashed = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let mut sha = Sha256::new();
            l.send_range(&st.store, 0, l.len(), |b| {
                sha.update(&b);
                !gone.load(std::sync::atomic::Ordering::Relaxed)
            })?;
            // A stop asked for is never a hash: the file was not read to its end.
            if gone.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(crate::store::StoreError::Io {
                    op: "hash an export",
                    path: st.store.root().to_owned(),
                    source: std::io::Error::other("the request was abandoned"),
                });
            }
            Ok::<_, crate::store::StoreError>(hex::encode(sha.finalize()))
        })
        .await
        .map_err(ApiError::internal)?;
        match hashed {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::error!(camera = %id, error = %e, "export refused: stored footage failed its check");
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "stored footage of camera {id:?} in that range changed or failed its \
                         check while it was read; ask again"
                    ),
                ));
            }
        }
    } else {
        drop(slot);
        None
    };

    let mut object = json!({
        "camera": id,
        "from": p.from.to_rfc3339(),
        "to": p.to.to_rfc3339(),
        "clip_start": layout.plan.start.to_rfc3339(),
        "clip_end": layout.plan.end.to_rfc3339(),
        "frames": layout.frames,
        "bytes": size,
    });
    if let Some(sha) = &sha {
        object["sha256"] = sha.clone().into();
        object["size"] = size.into();
        object["file_name"] = name.clone().into();
    }
    let purpose = non_empty(q.purpose.clone());
    let mut e = entry(user, kind.name(), object);
    e.reason = non_empty(q.reason.clone());
    e.purpose = purpose.clone();
    e.recipient = non_empty(q.recipient.clone());
    e.reference = non_empty(q.reference.clone());
    e.sites = vec![p.site.clone()];
    // Asked again: the hash may have taken minutes, and other ids came meanwhile. This time
    // the room is kept for this id (concurrent requests cannot all take the same room) until
    // it is inserted below, or given back if the logbook refuses the entry or the request is
    // dropped while the entry is written (the entry, once begun, is still written: a logged
    // look whose id was never handed out). Ids ended to make the room stay ended.
    let Some(room) = ids().reserve(&user.name, kind, layout.mem_size()) else {
        return Err(no_room());
    };
    let logged = state.record(e).await?;

    let token = new_id();
    let now = state.clock.now();
    let life = match kind {
        Footage::View => VIEW_IDLE,
        Footage::Export => EXPORT_LIFE,
    };
    let expires_at = now.add_ticks(life.as_secs() as i64 * crate::time::TICKS_PER_SEC);
    let route = match kind {
        Footage::View => "view",
        Footage::Export => "export",
    };
    let url = format!(
        "/api/v1/cameras/{}/{route}.mp4?{route}={token}",
        percent_encoding::utf8_percent_encode(id, PATH_SEGMENT)
    );
    let mut answer = json!({
        route: token,
        "logbook_seq": logged.entry.seq,
        "url": url,
        "size": size,
        "clip_start": layout.plan.start.to_rfc3339(),
        "clip_end": layout.plan.end.to_rfc3339(),
        "expires_at": expires_at.to_rfc3339(),
    });
    if let Some(sha) = sha {
        let extra = json!({
            "file_name": name,
            "sha256": sha,
            "camera": id,
            "from": p.from.to_rfc3339(),
            "to": p.to.to_rfc3339(),
            "purpose": purpose,
            "reason": logged.entry.body.reason,
            "recipient": logged.entry.body.recipient,
            "reference": logged.entry.body.reference,
            "user": user.name,
            "created_at": now.to_rfc3339(),
        });
        for (k, v) in extra.as_object().expect("an object") {
            answer[k] = v.clone();
        }
    }
    let held = Held::new(
        kind,
        user.name.clone(),
        id.to_owned(),
        p.site,
        purpose,
        layout,
        (logged.entry.seq, logged.hash.clone()),
        name,
        if kind == Footage::Export {
            answer.clone()
        } else {
            serde_json::Value::Null
        },
    );
    room.insert(&token, held);
    let mut resp = (StatusCode::CREATED, axum::Json(answer)).into_response();
    resp.headers_mut().insert(
        "x-holdfast-logbook-seq",
        HeaderValue::from(logged.entry.seq),
    );
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

/// The answer when a new view or export id does not fit (`Ids::has_room`).
fn no_room() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many views and exports are open on this server; try again in a few minutes",
    )
}
