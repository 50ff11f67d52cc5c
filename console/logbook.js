// The logbook: the verify status on top (green, or red with the first bad seq), a filtered
// list (range, action, user), one entry with everything linked to it and the entries of the
// same incident (entries that refer to each other or share a reference), and the forms to add
// a finding and to sign off (not on one's own entry: the API refuses that anyway).

import { get, post } from './api.js';
import { errorBox, field, h, notice, screenTitle, showError, table, put, fill } from './dom.js';
import { reasonField, val } from './forms.js';
import { t } from './i18n/index.js';
import { link } from './nav.js';
import { addDays, dayBounds, fmtDateTime, iso, todayIn } from './time.js';

const SHOW_MAX = 500;

/** The verify banner: GET /api/v1/logbook/verify. */
async function verifyBanner(ctx) {
  const el = h('div', { id: 'verify-status', class: 'verify verify-pending', role: 'status' }, t('logbook.verifying'));
  get('/api/v1/logbook/verify')
    .then((v) => {
      el.className = v.ok ? 'verify verify-ok' : 'verify verify-bad';
      el.dataset.ok = String(v.ok);
      if (v.first_bad_seq) el.dataset.firstBadSeq = String(v.first_bad_seq);
      fill(el, 
        h('span', { class: 'verify-mark', 'aria-hidden': 'true' }, v.ok ? '✔' : '✖'),
        ' ',
        h('strong', {}, v.ok ? t('logbook.verify_ok', { n: v.entries }) : t('logbook.verify_bad', { seq: v.first_bad_seq ?? '?' })),
        v.ok ? null : [' ', h('a', { href: link('logbook', [String(v.first_bad_seq)]), id: 'first-bad-link' }, t('logbook.open_entry', { seq: v.first_bad_seq ?? '?' }))],
        v.problem ? h('span', { class: 'verify-problem' }, ` ${v.problem}`) : null,
      );
    })
    .catch((err) => {
      el.className = 'verify verify-bad';
      el.textContent = `${t('logbook.verify_failed')} ${err.message}`;
    });
  return el;
}

/** A one-line description of an entry's object. */
export function describe(e, ctx) {
  const o = e.object;
  if (o && typeof o === 'object') {
    const parts = [];
    if (o.camera) parts.push(o.camera);
    if (o.cameras) parts.push(Array.isArray(o.cameras) ? o.cameras.join(', ') : String(o.cameras));
    if (o.site) parts.push(o.site);
    if (o.hold || o.id) parts.push(`#${o.hold || o.id}`);
    if (o.from && o.to) parts.push(`${fmtDateTime(o.from, ctx.tz, ctx.locale)} – ${fmtDateTime(o.to, ctx.tz, ctx.locale)}`);
    if (o.outcome) parts.push(String(o.outcome));
    if (o.entry) parts.push(`→ ${o.entry}`);
    if (o.remote) parts.push(String(o.remote));
    if (o.why) parts.push(String(o.why));
    if (parts.length) return parts.join(' · ');
  }
  const s = o === undefined || o === null ? '' : JSON.stringify(o);
  return s.length > 80 ? `${s.slice(0, 77)}…` : s;
}

function entryRow(e, ctx) {
  return h(
    'tr',
    { 'data-seq': String(e.seq), 'data-action': e.action, 'data-user': e.user },
    h('td', {}, h('a', { href: link('logbook', [String(e.seq)]) }, String(e.seq))),
    h('td', {}, fmtDateTime(e.time, ctx.tz, ctx.locale)),
    h('td', {}, `${e.user} (${e.role})`),
    h('td', {}, h('code', {}, e.action)),
    h('td', {}, describe(e, ctx)),
    h('td', {}, e.reason || e.text || ''),
    h('td', {}, e.reference || ''),
    h('td', {}, e.refers_to ? h('a', { href: link('logbook', [String(e.refers_to)]) }, `→ ${e.refers_to}`) : ''),
  );
}

const HEAD = ['logbook.col.seq', 'logbook.col.time', 'logbook.col.user', 'logbook.col.action', 'logbook.col.object', 'logbook.col.reason', 'logbook.col.reference', 'logbook.col.refers'];

/** The entries of `list` in one incident with `seq`: linked by `refers_to` or a shared reference. */
export function incidentOf(seq, list) {
  const bySeq = new Map(list.map((e) => [e.seq, e]));
  const parent = new Map();
  const find = (x) => {
    while (parent.has(x) && parent.get(x) !== x) x = parent.get(x);
    return x;
  };
  const union = (a, b) => {
    const ra = find(a);
    const rb = find(b);
    if (ra !== rb) parent.set(ra, rb);
  };
  const byRef = new Map();
  for (const e of list) {
    if (!parent.has(e.seq)) parent.set(e.seq, e.seq);
    if (e.refers_to && bySeq.has(e.refers_to)) union(e.seq, e.refers_to);
    if (e.reference) {
      if (byRef.has(e.reference)) union(e.seq, byRef.get(e.reference));
      else byRef.set(e.reference, e.seq);
    }
  }
  if (!bySeq.has(seq)) return [];
  const root = find(seq);
  return list.filter((e) => find(e.seq) === root);
}

async function renderList(root, ctx) {
  const today = todayIn(ctx.tz);
  const fromDate = ctx.query.get('from') || addDays(today, -7);
  const toDate = ctx.query.get('to') || today;
  const action = ctx.query.get('action') || '';
  const user = ctx.query.get('user') || '';
  const fromIn = h('input', { type: 'date', name: 'from', value: fromDate, required: true });
  const toIn = h('input', { type: 'date', name: 'to', value: toDate, required: true });
  const actionIn = h('input', { type: 'text', name: 'action', value: action, list: 'logbook-actions', id: 'filter-action' });
  const userIn = h('input', { type: 'text', name: 'user', value: user, id: 'filter-user' });
  const actions = h('datalist', { id: 'logbook-actions' });
  const form = h(
    'form',
    { id: 'logbook-filter', class: 'card' },
    h('div', { class: 'inline' }, field('logbook.from', fromIn), field('logbook.to', toIn), field('logbook.action', actionIn), field('logbook.user', userIn)),
    actions,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, t('logbook.filter'))),
  );
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    ctx.go(link('logbook', [], { from: fromIn.value, to: toIn.value, action: actionIn.value.trim(), user: userIn.value.trim() }));
  });
  const box = errorBox();
  const out = h('div', { id: 'logbook-list' });
  put(root, form, box, out);
  let res;
  try {
    res = await get('/api/v1/logbook', { from: iso(dayBounds(fromDate, ctx.tz)[0]), to: iso(dayBounds(toDate, ctx.tz)[1]) });
  } catch (err) {
    showError(box, err, form);
    return;
  }
  const all = res.entries;
  for (const a of [...new Set(all.map((e) => e.action))].sort()) put(actions, h('option', { value: a }));
  const shown = all
    .filter((e) => (!action || e.action === action || e.action.startsWith(`${action}.`)) && (!user || e.user === user))
    .reverse();
  put(out, 
    h('p', { class: 'summary' }, t('logbook.count', { n: shown.length, total: all.length })),
    shown.length > SHOW_MAX ? notice(t('logbook.truncated', { n: SHOW_MAX }), 'info') : null,
    res.next_after ? notice(t('logbook.more'), 'info') : null,
    shown.length ? table(HEAD, shown.slice(0, SHOW_MAX).map((e) => entryRow(e, ctx)), 'logbook') : h('p', {}, t('logbook.none')),
  );
}

function entryFacts(e, ctx) {
  const rows = [
    ['logbook.col.seq', String(e.seq)],
    ['logbook.col.time', fmtDateTime(e.time, ctx.tz, ctx.locale, true)],
    ['logbook.col.user', `${e.user} (${e.role})`],
    ['logbook.col.action', e.action],
    ['logbook.col.object', describe(e, ctx)],
    ['form.reason', e.reason],
    ['form.purpose', e.purpose],
    ['form.recipient', e.recipient],
    ['form.reference', e.reference],
    ['logbook.text', e.text],
    ['logbook.col.refers', e.refers_to ? String(e.refers_to) : undefined],
    ['logbook.sites', e.sites ? e.sites.join(', ') : undefined],
    ['logbook.hash', e.hash],
  ];
  return h(
    'dl',
    { class: 'facts' },
    rows.filter(([, v]) => v !== undefined && v !== null && v !== '').map(([k, v]) => [h('dt', {}, t(k)), h('dd', { class: k === 'logbook.hash' ? 'hash' : null }, v)]),
    h('dt', {}, t('logbook.details')),
    h('dd', {}, h('pre', { class: 'json' }, JSON.stringify(e.object, null, 2))),
  );
}

async function renderEntry(root, ctx, seq, message) {
  const box = errorBox();
  put(root, h('p', {}, h('a', { href: link('logbook') }, t('logbook.back'))), box);
  if (message) put(root, notice(message));
  let e;
  try {
    e = await get(`/api/v1/logbook/${encodeURIComponent(seq)}`);
  } catch (err) {
    showError(box, err);
    return;
  }
  put(root, h('section', { class: 'card', id: 'entry', 'data-seq': String(e.seq), 'data-user': e.user }, h('h2', {}, t('logbook.entry', { seq: e.seq })), entryFacts(e, ctx)));
  if (e.linked && e.linked.length) {
    put(root, h('section', { id: 'linked' }, h('h2', {}, t('logbook.linked')), table(HEAD, e.linked.map((x) => entryRow(x, ctx)), 'logbook')));
  }
  const me = ctx.session.user;
  const rerender = (msg) => {
    fill(root, screenTitle(t('logbook.title')));
    verifyBanner(ctx).then((b) => root.insertBefore(b, root.children[1] || null));
    renderEntry(root, ctx, seq, msg);
  };
  const forms = [];
  if (ctx.may('sign_off') || e.user === me) {
    const fbox = errorBox();
    const f = h('form', { id: 'finding-form', class: 'card' }, h('h2', {}, t('logbook.finding')), reasonField('logbook.finding_hint', 'finding', 'logbook.finding_label'), fbox, h('button', { type: 'submit', id: 'finding-submit' }, t('logbook.finding_submit')));
    f.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      try {
        const r = await post(`/api/v1/logbook/${e.seq}/finding`, { finding: val(f, 'finding') });
        rerender(t('logbook.finding_done', { seq: r.seq }));
      } catch (err) {
        showError(fbox, err, f);
      }
    });
    forms.push(f);
  }
  if (ctx.may('sign_off') && e.user !== me) {
    const sbox = errorBox();
    const f = h('form', { id: 'signoff-form', class: 'card' }, h('h2', {}, t('logbook.signoff')), h('p', {}, t('logbook.signoff_intro')), reasonField('logbook.note_hint', 'note', 'logbook.note'), sbox, h('button', { type: 'submit', class: 'primary', id: 'signoff-submit' }, t('logbook.signoff_submit')));
    f.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      try {
        const r = await post(`/api/v1/logbook/${e.seq}/signoff`, { note: val(f, 'note') });
        rerender(t('logbook.signoff_done', { seq: r.seq }));
      } catch (err) {
        showError(sbox, err, f);
      }
    });
    forms.push(f);
  } else if (ctx.may('sign_off')) {
    forms.push(notice(t('logbook.own_entry'), 'info'));
  }
  put(root, h('div', { class: 'two' }, forms));
  // The incident: entries around this one that refer to each other or share a reference.
  try {
    const from = new Date(Date.parse(e.time) - 30 * 86400000);
    const res = await get('/api/v1/logbook', { from: iso(from), to: iso(Date.now() + 60000) });
    const group = incidentOf(e.seq, res.entries);
    if (group.length > 1) {
      put(root, h('section', { id: 'incident' }, h('h2', {}, t('logbook.incident', { n: group.length })), table(HEAD, group.map((x) => entryRow(x, ctx)), 'logbook')));
    }
  } catch (err) {
    const b = errorBox();
    put(root, b);
    showError(b, err);
  }
}

/** Renders `#/logbook` (the list) or `#/logbook/<seq>` (one entry). */
export async function render(root, ctx) {
  put(root, screenTitle(t('logbook.title')));
  put(root, await verifyBanner(ctx));
  if (ctx.params[0]) await renderEntry(root, ctx, ctx.params[0]);
  else await renderList(root, ctx);
}
