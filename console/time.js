// Local time for the console: the site's time zone (the session's `timezone`, an IANA name)
// converted with Intl, both ways. `zonedToUtc` turns a local date and time into an instant and
// handles the two awkward cases of daylight saving time:
//   - a gap (the clocks jump forward, 02:30 does not exist): the time is read with the offset
//     from before the jump, so 02:30 becomes 03:30 summer time (as Temporal's "compatible");
//   - a fold (the clocks go back, 02:30 happens twice): the earlier of the two instants.
// `resolveZoned` also says which case it was, so a form can warn. Checked by
// tests/console/browser.py (`time_checks`).

const formatters = new Map();

function partsFormatter(tz) {
  let f = formatters.get(tz);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', {
      timeZone: tz,
      hourCycle: 'h23',
      year: 'numeric',
      month: '2-digit',
      day: '2-digit',
      hour: '2-digit',
      minute: '2-digit',
      second: '2-digit',
    });
    formatters.set(tz, f);
  }
  return f;
}

/** The wall-clock fields of instant `ms` (milliseconds since the epoch) in `tz`. */
export function zonedParts(ms, tz) {
  const p = {};
  for (const x of partsFormatter(tz).formatToParts(new Date(ms))) p[x.type] = x.value;
  return {
    y: Number(p.year),
    mo: Number(p.month),
    d: Number(p.day),
    h: Number(p.hour) % 24,
    mi: Number(p.minute),
    s: Number(p.second),
  };
}

/** The offset of `tz` from UTC at instant `ms`, in milliseconds (east positive). */
export function offsetAt(ms, tz) {
  const whole = Math.floor(ms / 1000) * 1000;
  const p = zonedParts(whole, tz);
  return Date.UTC(p.y, p.mo - 1, p.d, p.h, p.mi, p.s) - whole;
}

const DAY = 86400000;

function parseDate(date) {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(date || '');
  if (!m) throw new RangeError(`not a date: ${date}`);
  return [Number(m[1]), Number(m[2]), Number(m[3])];
}

function parseTime(time) {
  const m = /^(\d{2}):(\d{2})(?::(\d{2}))?$/.exec(time || '');
  if (!m || Number(m[1]) > 23 || Number(m[2]) > 59 || Number(m[3] || 0) > 59) {
    throw new RangeError(`not a time: ${time}`);
  }
  return [Number(m[1]), Number(m[2]), Number(m[3] || 0)];
}

/**
 * A local date ("2026-11-22") and time ("21:00" or "21:00:30") in `tz` as an instant:
 * `{date: Date, kind: "ok" | "gap" | "fold"}`. Throws RangeError for a malformed date or time.
 */
export function resolveZoned(date, time, tz) {
  const [y, mo, d] = parseDate(date);
  const [h, mi, s] = parseTime(time);
  const wall = Date.UTC(y, mo - 1, d, h, mi, s);
  if (new Date(wall).getUTCDate() !== d) throw new RangeError(`not a date: ${date}`);
  const before = offsetAt(wall - DAY, tz);
  const offsets = new Set([before, offsetAt(wall, tz), offsetAt(wall + DAY, tz)]);
  const valid = [];
  for (const o of offsets) {
    const inst = wall - o;
    if (offsetAt(inst, tz) === o) valid.push(inst);
  }
  valid.sort((a, b) => a - b);
  if (valid.length === 0) return { date: new Date(wall - before), kind: 'gap' };
  return { date: new Date(valid[0]), kind: valid.length > 1 ? 'fold' : 'ok' };
}

/** A local date and time in `tz` as a Date (see `resolveZoned` for gaps and folds). */
export function zonedToUtc(date, time, tz) {
  return resolveZoned(date, time, tz).date;
}

const pad = (n) => String(n).padStart(2, '0');

/** An instant (Date, ms or RFC 3339 text) as local `{date: "YYYY-MM-DD", time: "HH:MM:SS"}`. */
export function utcToZoned(when, tz) {
  const ms = toMs(when);
  const p = zonedParts(ms, tz);
  return {
    date: `${p.y}-${pad(p.mo)}-${pad(p.d)}`,
    time: `${pad(p.h)}:${pad(p.mi)}:${pad(p.s)}`,
  };
}

function toMs(when) {
  if (when instanceof Date) return when.getTime();
  if (typeof when === 'number') return when;
  return Date.parse(when);
}

/** Today's date in `tz` ("YYYY-MM-DD"). */
export function todayIn(tz) {
  return utcToZoned(Date.now(), tz).date;
}

/** `date` ("YYYY-MM-DD") plus `n` calendar days. */
export function addDays(date, n) {
  const [y, mo, d] = parseDate(date);
  const x = new Date(Date.UTC(y, mo - 1, d + n));
  return `${x.getUTCFullYear()}-${pad(x.getUTCMonth() + 1)}-${pad(x.getUTCDate())}`;
}

/** The instants at which local day `date` starts and ends in `tz` (23 or 25 hours on DST days). */
export function dayBounds(date, tz) {
  return [zonedToUtc(date, '00:00', tz), zonedToUtc(addDays(date, 1), '00:00', tz)];
}

/** An instant as RFC 3339 UTC text for the API (no fraction when it is zero). */
export function iso(when) {
  return new Date(toMs(when)).toISOString().replace('.000Z', 'Z');
}

const displayFormatters = new Map();

function display(locale, tz, opts) {
  const key = `${locale}|${tz}|${JSON.stringify(opts)}`;
  let f = displayFormatters.get(key);
  if (!f) {
    f = new Intl.DateTimeFormat(locale, { timeZone: tz, hourCycle: 'h23', ...opts });
    displayFormatters.set(key, f);
  }
  return f;
}

/** Date and time in `tz` for people: "22-11-2026 21:00:05" (nl) / "22/11/2026, 21:00:05" (en). */
export function fmtDateTime(when, tz, locale, withZone = false) {
  if (when === null || when === undefined) return '—';
  const opts = {
    year: 'numeric',
    month: '2-digit',
    day: '2-digit',
    hour: '2-digit',
    minute: '2-digit',
    second: '2-digit',
  };
  if (withZone) opts.timeZoneName = 'short';
  return display(locale, tz, opts).format(new Date(toMs(when)));
}

/** Only the time of day in `tz`: "21:00:05". */
export function fmtTime(when, tz, locale) {
  return display(locale, tz, { hour: '2-digit', minute: '2-digit', second: '2-digit' }).format(
    new Date(toMs(when)),
  );
}

/** Only the date in `tz`, long form: "zondag 22 november 2026". */
export function fmtDate(when, tz, locale) {
  return display(locale, tz, {
    weekday: 'long',
    year: 'numeric',
    month: 'long',
    day: 'numeric',
  }).format(new Date(toMs(when)));
}

/** A duration in seconds as "1 h 02 min", "3 min 05 s" or "12 s". */
export function fmtDuration(secs) {
  const s = Math.max(0, Math.round(secs));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${pad(s % 60)} s`;
  const h = Math.floor(s / 3600);
  if (h < 48) return `${h} h ${pad(Math.floor((s % 3600) / 60))} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}
