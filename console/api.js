// The API client: every request same-origin with the session cookie and the CSRF token, JSON both ways, and errors as `ApiError` carrying the API's own
// `error` text and the `detail.field` it names. The CSRF token lives only in this module's
// memory (never in storage); a 401 outside sign-in tells the app that the session is gone.

import { t } from './i18n/index.js';

let csrf = null;
let onExpired = null;

/** Sets (or, with null, forgets) the session's CSRF token. */
export function setCsrf(token) {
  csrf = token || null;
}

/** Registers what to do when a request is answered 401 (the session ended or expired). */
export function onSessionExpired(fn) {
  onExpired = fn;
}

/** An error answer of the API (or a network failure, status 0). */
export class ApiError extends Error {
  constructor(status, message, field, detail) {
    super(message);
    this.status = status;
    this.field = field || null;
    this.detail = detail || null;
  }
}

/** `path` with a query string of the given params (undefined, null and '' left out). */
export function withQuery(path, params) {
  if (!params) return path;
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

/** One request; resolves to the parsed JSON (null for 204), rejects with an ApiError. */
export async function request(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  // On every request, GETs too: a GET that is logged (a key-tag query) needs it as well.
  if (csrf) headers['X-CSRF-Token'] = csrf;
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      credentials: 'same-origin',
      cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, t('error.network'), null, null);
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (e) {
    data = null;
  }
  if (!res.ok) {
    const detail = data && typeof data.detail === 'object' ? data.detail : null;
    const err = new ApiError(
      res.status,
      (data && data.error) || `HTTP ${res.status}`,
      detail && detail.field,
      detail,
    );
    if (res.status === 401 && onExpired && path !== '/api/v1/session') onExpired(err);
    throw err;
  }
  return data;
}

/** GET with query params. */
export const get = (path, params) => request('GET', withQuery(path, params));
/** POST a JSON body. */
export const post = (path, body) => request('POST', path, body === undefined ? {} : body);
/** DELETE. */
export const del = (path) => request('DELETE', path);

/** A camera id or other path segment, escaped. */
export const seg = (s) => encodeURIComponent(String(s));
