//! `GET /api/v1/logbook`, `GET /api/v1/logbook/{seq}`, `GET /api/v1/logbook/verify`, and the
//! additions that never change an entry: `POST .../{seq}/finding` and `POST .../{seq}/signoff`.
//!
//! Site scope: an entry belongs to the sites of its object (`sites`); a user scoped to some sites
//! lists, reads, adds findings to and signs off only entries all of whose sites are theirs, and
//! entries without a site (refused requests of unknown origin, configuration events) only `*`
//! users see. An entry the user may not see is answered like one that does not exist.
//! `GET .../{seq}` also returns the entries linked to it (`refers_to`: an export's outcome with
//! the SHA-256 of what was sent, findings, sign-offs). A finding is added by the user who made
//! the consultation or by someone who may sign off; a sign-off is by someone else than the user
//! of the entry (four eyes) and binds that entry's hash (`refers_hash`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::auth::Principal;
use super::holds::parse_json;
use super::{
    authenticate, authorize, entry, entry_visible, parse_query, read_body, ApiError, AppState,
    Param, JSON_BODY_LIMIT,
};
use crate::logbook::{HashedEntry, Logbook, LogbookError};
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
    after: Option<u64>,
}

/// `GET /api/v1/logbook?from=&to=&limit=&after=`: the entries of the user's sites, oldest first
/// (`after` continues after a seq).
pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let user = authorize(&state, &headers, Permission::LogbookRead)?;
    let q: LogbookQuery = parse_query(raw.as_deref())?;
    let parse = |field: &str, v: &Option<String>, default: Time90k| match v {
        None => Ok(default),
        Some(s) => Time90k::parse_rfc3339(s).map_err(|e| ApiError::bad_field(field, e)),
    };
    let from = parse("from", &q.from, Time90k(i64::MIN / 2))?;
    let to = parse("to", &q.to, Time90k(i64::MAX / 2))?;
    let limit = q.limit.unwrap_or(MAX_ENTRIES).clamp(1, MAX_ENTRIES);
    let start = q.after.unwrap_or(0).saturating_add(1);
    let st = state.clone();
    let (entries, next_after) = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut scanned = 0usize;
        let mut next_after = None;
        for e in Logbook::iter_from(st.store.index(), start) {
            let e = e?;
            let e_seq = e.entry.seq;
            if e.entry.time >= to {
                break;
            }
            if e.entry.time >= from && entry_visible(&user, &entry_sites(&st, &e)) {
                out.push(e);
                if out.len() >= limit {
                    break;
                }
            }
            scanned += 1;
            if scanned >= SCAN_BUDGET {
                next_after = Some(e_seq);
                break;
            }
        }
        Ok::<_, LogbookError>((out, next_after))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Ok(Json(json!({ "entries": entries, "next_after": next_after })).into_response())
}

/// Entries one request looks at, at most (a listing then says where to go on).
pub const SCAN_BUDGET: usize = 100_000;

/// The sites an entry belongs to: its own `sites`; for a look at footage (`export`, `view`)
/// written before entries carried sites, the site of the camera it names. Every other entry
/// without sites (a refusal of another site's camera, say) is for `*` users only; current
/// `export` and `view` entries always carry their site, so only old ones are derived.
pub fn entry_sites(state: &AppState, e: &HashedEntry) -> Vec<String> {
    if !e.entry.body.sites.is_empty() {
        return e.entry.body.sites.clone();
    }
    if !matches!(e.entry.body.action.as_str(), "export" | "view") {
        return Vec::new();
    }
    e.entry
        .body
        .object
        .get("camera")
        .and_then(|c| c.as_str())
        .and_then(|c| state.camera_site(c))
        .map(|s| vec![s.to_owned()])
        .unwrap_or_default()
}

fn parse_seq(seq: &str) -> Result<u64, ApiError> {
    seq.parse().map_err(|_| {
        ApiError::bad_field(
            "seq",
            format!(
                "{:?} is not an entry number",
                seq.chars().take(32).collect::<String>()
            ),
        )
    })
}

fn no_entry(seq: u64) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no logbook entry {seq}"))
}

/// An entry the user may see (`own` also lets users see entries they made themselves).
async fn fetch(
    state: &Arc<AppState>,
    user: &Principal,
    seq: u64,
    own: bool,
) -> Result<HashedEntry, ApiError> {
    let st = state.clone();
    let e = match tokio::task::spawn_blocking(move || Logbook::get(st.store.index(), seq))
        .await
        .map_err(ApiError::internal)?
    {
        Ok(e) => e,
        Err(LogbookError::NoSuchEntry(_)) => return Err(no_entry(seq)),
        Err(e) => return Err(ApiError::internal(e)),
    };
    let mine = own && e.entry.body.user == user.name;
    if !mine && !entry_visible(user, &entry_sites(state, &e)) {
        return Err(no_entry(seq));
    }
    Ok(e)
}

/// `GET /api/v1/logbook/{seq}`: the entry and the entries linked to it.
pub async fn get_one(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Param(seq): Param,
) -> Result<Response, ApiError> {
    let user = authorize(&state, &headers, Permission::LogbookRead)?;
    let seq = parse_seq(&seq)?;
    let e = fetch(&state, &user, seq, false).await?;
    let st = state.clone();
    let u = user.clone();
    let linked = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let start = seq.saturating_add(1);
        for l in Logbook::iter_from(st.store.index(), start).take(SCAN_BUDGET) {
            let l = l?;
            if l.entry.body.refers_to == Some(seq) && entry_visible(&u, &entry_sites(&st, &l)) {
                out.push(l);
            }
        }
        Ok::<_, LogbookError>(out)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let mut v = serde_json::to_value(&e).map_err(ApiError::internal)?;
    v["linked"] = serde_json::to_value(&linked).map_err(ApiError::internal)?;
    Ok(Json(v).into_response())
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
    state: &Arc<AppState>,
    user: &Principal,
    target: HashedEntry,
    action: &str,
    text: String,
) -> Result<Response, ApiError> {
    let seq = target.entry.seq;
    let mut e = entry(user, action, json!({ "entry": seq }));
    e.refers_to = Some(seq);
    e.refers_hash = Some(target.hash);
    e.sites = target.entry.body.sites;
    e.text = Some(text);
    let logged = state.record(e).await?;
    Ok((StatusCode::CREATED, Json(logged)).into_response())
}

/// `POST /api/v1/logbook/{seq}/finding` `{finding}`: by the user who made the consultation, or
/// by someone who may sign off.
pub async fn finding(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Param(seq): Param,
    body: Body,
) -> Result<Response, ApiError> {
    let user = authenticate(&state, &headers)?;
    let signer = user.can(Permission::SignOff);
    let seq =
        match parse_seq(&seq) {
            Ok(s) => s,
            Err(_) if !signer => return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "only the user who made the consultation or someone who may sign off adds findings",
            )),
            Err(e) => return Err(e),
        };
    let target =
        match fetch(&state, &user, seq, true).await {
            Ok(t) if signer || t.entry.body.user == user.name => t,
            Err(e) if signer => return Err(e),
            // Someone who may not sign off learns nothing about other people's entries.
            _ => return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "only the user who made the consultation or someone who may sign off adds findings",
            )),
        };
    let body = read_body(&headers, body, JSON_BODY_LIMIT).await?;
    let f: Finding = parse_json(&body)?;
    if f.finding.trim().is_empty() {
        return Err(ApiError::bad_field("finding", "must not be empty"));
    }
    super::check_len("finding", &f.finding, 4000)?;
    add(&state, &user, target, "finding", f.finding).await
}

/// `POST /api/v1/logbook/{seq}/signoff` `{note}`: four eyes, never one's own entry.
pub async fn signoff(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Param(seq): Param,
    body: Body,
) -> Result<Response, ApiError> {
    let user = authorize(&state, &headers, Permission::SignOff)?;
    let seq = parse_seq(&seq)?;
    let target = fetch(&state, &user, seq, false).await?;
    // Four eyes: not one's own entry, nor an entry about one's own (a finding or outcome that
    // refers, perhaps through others, to a consultation the signer made).
    let mut link = Some(target.clone());
    let mut depth = 0;
    while let Some(e) = link {
        if e.entry.body.user.eq_ignore_ascii_case(&user.name) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "four eyes: entry {} is by you or about your own entry {}; someone else signs it off",
                    seq, e.entry.seq
                ),
            ));
        }
        depth += 1;
        link = match e.entry.body.refers_to {
            Some(r) if r < e.entry.seq => {
                // Too long a chain, or a link that cannot be read, is refused: the rule must
                // not give way where it cannot be checked.
                if depth >= 32 {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        format!("entry {seq} refers through too many entries to check four eyes"),
                    ));
                }
                let st = state.clone();
                let linked = tokio::task::spawn_blocking(move || Logbook::get(st.store.index(), r))
                    .await
                    .map_err(ApiError::internal)?;
                match linked {
                    Ok(l) => Some(l),
                    Err(_) => {
                        return Err(ApiError::new(
                            StatusCode::FORBIDDEN,
                            format!(
                                "entry {r}, which entry {seq} refers to, cannot be read: four eyes \
                                 cannot be checked (run holdfast logbook verify)"
                            ),
                        ))
                    }
                }
            }
            _ => None,
        };
    }
    let body = read_body(&headers, body, JSON_BODY_LIMIT).await?;
    let s: SignOff = parse_json(&body)?;
    if s.note.trim().is_empty() {
        return Err(ApiError::bad_field("note", "must not be empty"));
    }
    super::check_len("note", &s.note, 4000)?;
    add(&state, &user, target, "signoff", s.note).await
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
