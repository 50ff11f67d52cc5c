// Recordings of one camera: a day in local time (date picker, previous/next day) drawn as a
// timeline of what can still be exported and the gaps, the retention edge marked, the list of
// recorded intervals, and a range to view or export.

import { get, seg } from './api.js';
import { errorBox, field, h, screenTitle, showError, table, put } from './dom.js';
import { range } from './forms.js';
import { t } from './i18n/index.js';
import { link } from './nav.js';
import { addDays, dayBounds, fmtDate, fmtDuration, fmtTime, iso, todayIn, utcToZoned, zonedToUtc } from './time.js';

function pct(x, a, b) {
  return `${(((x - a) / (b - a)) * 100).toFixed(3)}%`;
}

function bar(cls, from, to, a, b, label) {
  if (to <= a || from >= b) return null;
  const el = h('span', { class: `tl-${cls}`, title: label });
  el.style.left = pct(Math.max(from, a), a, b);
  el.style.width = `${(((Math.min(to, b) - Math.max(from, a)) / (b - a)) * 100).toFixed(3)}%`;
  return el;
}

/** Tick marks `[label, instant]` every `stepMin` minutes of local time from `a` to `b`. */
function ticksOf(a, b, stepMin, ctx) {
  const out = [];
  const start = utcToZoned(a, ctx.tz);
  const [hh, mm] = start.time.split(':').map(Number);
  let minutes = hh * 60 + mm;
  minutes -= minutes % stepMin;
  for (let day = 0, date = start.date; day < 2; day += 1, date = addDays(date, 1)) {
    for (; minutes < 24 * 60; minutes += stepMin) {
      const label = `${String(Math.floor(minutes / 60)).padStart(2, '0')}:${String(minutes % 60).padStart(2, '0')}`;
      const at = zonedToUtc(date, label, ctx.tz).getTime();
      if (at > b) return out;
      if (at >= a) out.push([label, at]);
    }
    minutes = 0;
  }
  return out;
}

/** A timeline of `[a, b)`: recorded bars, gaps, the retention edge, now, and tick marks. */
function timeline(rec, a, b, ctx, stepMin, id, captionKey) {
  const span = (x) => `${fmtTime(x.from, ctx.tz, ctx.locale)} – ${fmtTime(x.to, ctx.tz, ctx.locale)}`;
  const track = h('div', { class: 'tl-track' });
  const edge = rec.retention_edge ? Date.parse(rec.retention_edge) : null;
  if (edge !== null && edge > a) {
    const past = h('span', { class: 'tl-expired', title: t('rec.expired') });
    past.style.left = '0%';
    past.style.width = pct(Math.min(edge, b), a, b);
    put(track, past);
  }
  for (const g of rec.gaps) put(track, bar('gap', Date.parse(g.from), Date.parse(g.to), a, b, `${t('rec.gap')} ${span(g)}`));
  for (const i of rec.intervals) put(track, bar('rec', Date.parse(i.from), Date.parse(i.to), a, b, `${t('rec.recorded')} ${span(i)}`));
  if (edge !== null && edge >= a && edge <= b) {
    const m = h('span', { class: 'tl-edge', 'data-edge': rec.retention_edge }, h('span', { class: 'tl-edge-label' }, t('rec.edge_short')));
    m.style.left = pct(edge, a, b);
    put(track, m);
  }
  const now = Date.now();
  if (now > a && now < b) {
    const m = h('span', { class: 'tl-now', title: t('rec.now') });
    m.style.left = pct(now, a, b);
    put(track, m);
  }
  const ticks = h('div', { class: 'tl-ticks', 'aria-hidden': 'true' });
  for (const [label, at] of ticksOf(a, b, stepMin, ctx)) {
    const tick = h('span', { class: 'tl-tick' }, label);
    tick.style.left = pct(at, a, b);
    put(ticks, tick);
  }
  const recorded =
    rec.intervals.reduce((s, i) => s + Math.max(0, Math.min(Date.parse(i.to), b) - Math.max(Date.parse(i.from), a)), 0) / 1000;
  const gaps = rec.gaps.filter((g) => Date.parse(g.to) > a && Date.parse(g.from) < b).length;
  return h(
    'figure',
    { class: 'timeline', id },
    h('figcaption', { class: 'tl-caption' }, t(captionKey, { from: fmtTime(a, ctx.tz, ctx.locale).slice(0, 5), to: fmtTime(b, ctx.tz, ctx.locale).slice(0, 5) })),
    h('div', { role: 'img', 'aria-label': t('rec.timeline_label', { recorded: fmtDuration(recorded), n: gaps }) }, track, ticks),
  );
}

function legend() {
  return h(
    'p',
    { class: 'legend' },
    h('span', { class: 'key key-rec' }, t('rec.recorded')),
    h('span', { class: 'key key-gap' }, t('rec.gap')),
    h('span', { class: 'key key-expired' }, t('rec.expired')),
  );
}

/** Renders the screen: `#/recordings/<camera>?date=YYYY-MM-DD`. */
export async function render(root, ctx) {
  const cam = ctx.params[0];
  const date = /^\d{4}-\d{2}-\d{2}$/.test(ctx.query.get('date') || '') ? ctx.query.get('date') : todayIn(ctx.tz);
  const [dayStart, dayEnd] = dayBounds(date, ctx.tz);
  const box = errorBox();
  const picker = h('input', { type: 'date', name: 'date', id: 'rec-date', value: date });
  picker.addEventListener('change', () => {
    if (picker.value) ctx.go(link('recordings', [cam], { date: picker.value }));
  });
  const dayNav = h(
    'div',
    { class: 'day-nav' },
    h('a', { class: 'button', id: 'day-prev', href: link('recordings', [cam], { date: addDays(date, -1) }) }, t('rec.prev_day')),
    field('rec.date', picker),
    h('a', { class: 'button', id: 'day-next', href: link('recordings', [cam], { date: addDays(date, 1) }) }, t('rec.next_day')),
  );
  put(root, 
    screenTitle(t('rec.title', { camera: cam })),
    h('p', { class: 'lead' }, fmtDate(dayStart, ctx.tz, ctx.locale), ` (${ctx.tz})`),
    dayNav,
    box,
  );
  if (dayStart.getTime() > Date.now()) {
    put(root, h('p', {}, t('rec.future')));
    return;
  }
  let rec;
  try {
    rec = await get(`/api/v1/cameras/${seg(cam)}/recordings`, { from: iso(dayStart), to: iso(dayEnd) });
  } catch (err) {
    showError(box, err);
    return;
  }
  // The day, and the hour of the last recording (or the day's first hour) in more detail.
  const last = rec.intervals[rec.intervals.length - 1];
  const focus = utcToZoned(last ? Math.max(Date.parse(last.to) - 1, dayStart.getTime()) : dayStart, ctx.tz);
  const hourStart = zonedToUtc(focus.date, `${focus.time.slice(0, 2)}:00`, ctx.tz).getTime();
  put(
    root,
    timeline(rec, dayStart.getTime(), dayEnd.getTime(), ctx, 180, 'timeline-day', 'rec.day_caption'),
    timeline(rec, hourStart, Math.min(hourStart + 3600000, dayEnd.getTime()), ctx, 10, 'timeline-hour', 'rec.hour_caption'),
    legend(),
  );
  if (rec.retention_edge) {
    put(root, 
      h('p', { class: 'retention' }, t('rec.edge', { time: fmtTimeFull(rec.retention_edge, ctx) })),
    );
  }

  // The range to view or export: by default the last minute recorded this day.
  const defTo = last ? Date.parse(last.to) : dayStart.getTime() + 3600000;
  const defFrom = last ? Math.max(Date.parse(last.from), defTo - 60000) : dayStart.getTime();
  const rng = range(ctx.tz, defFrom, defTo);
  const rows = rec.intervals.map((i) =>
    h(
      'tr',
      {},
      h('td', {}, fmtTime(i.from, ctx.tz, ctx.locale)),
      h('td', {}, fmtTime(i.to, ctx.tz, ctx.locale)),
      h('td', {}, fmtDuration((Date.parse(i.to) - Date.parse(i.from)) / 1000)),
      h(
        'td',
        {},
        h(
          'button',
          {
            type: 'button',
            onclick: () => {
              const from = Date.parse(i.from);
              const to = Date.parse(i.to);
              setRange(rng, from, to, ctx.tz);
              rng.from.dateIn.focus();
            },
          },
          t('rec.use_range'),
        ),
      ),
    ),
  );
  const rangeBox = errorBox();
  const actions = [];
  const go = (screen) => {
    try {
      const { from, to } = rng.read();
      showError(rangeBox, null);
      ctx.go(link(screen, [cam], { from: iso(from), to: iso(to) }));
    } catch (err) {
      showError(rangeBox, err, form);
    }
  };
  if (ctx.purposes('view').length) {
    actions.push(h('button', { type: 'button', id: 'range-view', class: 'primary', onclick: () => go('view') }, t('rec.view')));
  }
  if (ctx.purposes('export').length) {
    actions.push(h('button', { type: 'button', id: 'range-export', onclick: () => go('export') }, t('rec.export')));
  }
  const form = h('form', { id: 'range-form', class: 'card' }, h('h2', {}, t('rec.range_title')), rng.el, rangeBox, h('div', { class: 'actions' }, actions));
  form.addEventListener('submit', (ev) => ev.preventDefault());
  put(root, 
    h('section', {}, h('h2', {}, t('rec.intervals_title')), rows.length ? table(['rec.col.from', 'rec.col.to', 'rec.col.length', 'rec.col.use'], rows, 'intervals') : h('p', { id: 'no-intervals' }, t('rec.nothing'))),
    actions.length ? form : null,
  );
}

function fmtTimeFull(when, ctx) {
  return new Intl.DateTimeFormat(ctx.locale, {
    timeZone: ctx.tz,
    dateStyle: 'medium',
    timeStyle: 'medium',
    hourCycle: 'h23',
  }).format(new Date(when));
}

function setRange(rng, from, to, tz) {
  const set = (pair, ms) => {
    const z = utcToZoned(ms, tz);
    pair.dateIn.value = z.date;
    pair.timeIn.value = z.time;
  };
  set(rng.from, from);
  set(rng.to, to);
}
