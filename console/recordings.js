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
  const el = h('span', { class: `tl-${cls}`, title: label });
  el.style.left = pct(Math.max(from, a), a, b);
  el.style.width = `${(((Math.min(to, b) - Math.max(from, a)) / (b - a)) * 100).toFixed(3)}%`;
  return el;
}

/** The timeline of one day: recorded bars, gaps, the retention edge, hour ticks. */
function timeline(rec, date, ctx, dayStart, dayEnd) {
  const a = dayStart.getTime();
  const b = dayEnd.getTime();
  const span = (x) => `${fmtTime(x.from, ctx.tz, ctx.locale)} – ${fmtTime(x.to, ctx.tz, ctx.locale)}`;
  const track = h('div', { class: 'tl-track' });
  const edge = rec.retention_edge ? Date.parse(rec.retention_edge) : null;
  if (edge !== null && edge > a) {
    const past = h('span', { class: 'tl-expired', title: t('rec.expired') });
    past.style.left = '0%';
    past.style.width = pct(Math.min(edge, b), a, b);
    track.appendChild(past);
  }
  for (const g of rec.gaps) track.appendChild(bar('gap', Date.parse(g.from), Date.parse(g.to), a, b, `${t('rec.gap')} ${span(g)}`));
  for (const i of rec.intervals) track.appendChild(bar('rec', Date.parse(i.from), Date.parse(i.to), a, b, `${t('rec.recorded')} ${span(i)}`));
  if (edge !== null && edge >= a && edge <= b) {
    const m = h('span', { class: 'tl-edge', id: 'retention-edge' }, h('span', { class: 'tl-edge-label' }, t('rec.edge_short')));
    m.style.left = pct(edge, a, b);
    track.appendChild(m);
  }
  const now = Date.now();
  if (now > a && now < b) {
    const m = h('span', { class: 'tl-now', title: t('rec.now') });
    m.style.left = pct(now, a, b);
    track.appendChild(m);
  }
  const ticks = h('div', { class: 'tl-ticks', 'aria-hidden': 'true' });
  for (let hour = 0; hour <= 24; hour += 3) {
    const at = hour === 24 ? b : zonedToUtc(date, `${String(hour).padStart(2, '0')}:00`, ctx.tz).getTime();
    const tick = h('span', { class: 'tl-tick' }, `${String(hour).padStart(2, '0')}:00`);
    tick.style.left = pct(at, a, b);
    ticks.appendChild(tick);
  }
  const recorded = rec.intervals.reduce((s, i) => s + (Date.parse(i.to) - Date.parse(i.from)), 0) / 1000;
  return h(
    'figure',
    { class: 'timeline' },
    h('div', { role: 'img', 'aria-label': t('rec.timeline_label', { recorded: fmtDuration(recorded), n: rec.gaps.length }) }, track, ticks),
    h(
      'figcaption',
      { class: 'legend' },
      h('span', { class: 'key key-rec' }, t('rec.recorded')),
      h('span', { class: 'key key-gap' }, t('rec.gap')),
      h('span', { class: 'key key-expired' }, t('rec.expired')),
    ),
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
  put(root, timeline(rec, date, ctx, dayStart, dayEnd));
  if (rec.retention_edge) {
    put(root, 
      h('p', { class: 'retention' }, t('rec.edge', { time: fmtTimeFull(rec.retention_edge, ctx) })),
    );
  }

  // The range to view or export: by default the last minute recorded this day.
  const last = rec.intervals[rec.intervals.length - 1];
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
