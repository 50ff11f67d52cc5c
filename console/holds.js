// Holds: the active, released and lapsed holds of the user's sites with their review dates and
// who asked; placing one (cameras or a whole site, range, reason, reference, requested by),
// extending and releasing one, each with its reason. Forms appear only for roles that may.

import { get, post } from './api.js';
import { errorBox, field, h, notice, screenTitle, select, showError, put, fill } from './dom.js';
import { dateTime, range, reasonField, textField, val } from './forms.js';
import { t } from './i18n/index.js';
import { listCameras, bySite } from './cameras.js';
import { fmtDateTime, iso, zonedToUtc } from './time.js';

const STATES = ['active', 'released', 'lapsed'];

function facts(rows) {
  return h(
    'dl',
    { class: 'facts' },
    rows.filter(([, v]) => v !== undefined).map(([k, v]) => [h('dt', {}, t(k)), h('dd', {}, v === null || v === '' ? '—' : v)]),
  );
}

function holdCard(hold, ctx, reload) {
  const dt = (x) => fmtDateTime(x, ctx.tz, ctx.locale);
  const card = h(
    'article',
    { class: `card hold hold-${hold.state}`, id: `hold-${hold.id}`, 'data-hold': String(hold.id) },
    h('h3', {}, t('holds.hold', { id: hold.id }), ' ', h('span', { class: `badge badge-${hold.state}` }, t(`holds.state.${hold.state}`))),
    hold.partial ? notice(t('holds.partial'), 'info') : null,
    facts([
      ['holds.target', hold.site ? t('holds.whole_site', { site: hold.site }) : hold.cameras.join(', ')],
      ['holds.range', `${dt(hold.from)} – ${dt(hold.to)}`],
      ['form.reason', hold.reason],
      ['form.reference', hold.reference],
      ['holds.requested_by', hold.requested_by],
      ['holds.placed', `${hold.placed_by || '—'}, ${dt(hold.placed_at)}`],
      ['holds.review', dt(hold.expires_at)],
      ['holds.keytags', hold.keytags ? t('common.yes') : t('common.no')],
      hold.released ? ['holds.released', `${hold.released.by || '—'}, ${dt(hold.released.at)}: ${hold.released.reason || '—'}`] : ['holds.released', undefined],
    ]),
    hold.extensions.length
      ? h(
          'div',
          { class: 'extensions' },
          h('h4', {}, t('holds.extensions')),
          h('ul', {}, hold.extensions.map((e) => h('li', {}, `${dt(e.at)} ${e.by || '—'}: ${dt(e.expires_at)} — ${e.reason || '—'}`))),
        )
      : null,
  );
  if (hold.state === 'active' && !hold.partial && ctx.may('release_hold')) {
    put(card, changeForms(hold, ctx, reload));
  }
  return card;
}

function changeForms(hold, ctx, reload) {
  const extBox = errorBox();
  // Proposed: two weeks on, but not past two weeks from now (the usual `hold_review`; the API
  // names the real limit when the policy's is shorter).
  const current = Date.parse(hold.expires_at);
  let later = Math.min(current + 14 * 86400000, Date.now() + 14 * 86400000 - 300000);
  if (later <= current) later = current + 86400000;
  const until = dateTime('expires_at', 'holds.new_review', later, ctx.tz);
  const ext = h(
    'form',
    { class: 'extend-form' },
    h('h4', {}, t('holds.extend')),
    until.el,
    reasonField('holds.extend_hint'),
    extBox,
    h('button', { type: 'submit' }, t('holds.extend_submit')),
  );
  ext.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      await post(`/api/v1/holds/${hold.id}/extend`, { expires_at: iso(until.read()), reason: val(ext, 'reason') });
      reload(t('holds.extended', { id: hold.id }));
    } catch (err) {
      showError(extBox, err, ext);
    }
  });
  const relBox = errorBox();
  const rel = h(
    'form',
    { class: 'release-form' },
    h('h4', {}, t('holds.release')),
    reasonField('holds.release_hint'),
    relBox,
    h('button', { type: 'submit', class: 'danger' }, t('holds.release_submit')),
  );
  rel.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      await post(`/api/v1/holds/${hold.id}/release`, { reason: val(rel, 'reason') });
      reload(t('holds.released_done', { id: hold.id }));
    } catch (err) {
      showError(relBox, err, rel);
    }
  });
  return h('details', { class: 'changes' }, h('summary', {}, t('holds.change')), h('div', { class: 'two' }, ext, rel));
}

function placeForm(cams, ctx, reload) {
  const box = errorBox();
  const now = Date.now();
  const rng = range(ctx.tz, now - 3600000, now);
  const sites = bySite(cams);
  const camChecks = h(
    'fieldset',
    { class: 'checks', id: 'hold-cameras' },
    h('legend', {}, t('holds.cameras')),
    cams.map((c) => {
      const cb = h('input', { type: 'checkbox', name: 'cameras', value: c.id, id: `hold-cam-${c.id}` });
      return h('div', { class: 'check' }, cb, h('label', { for: cb.id }, `${c.id} (${c.site})`));
    }),
  );
  const siteSel = field('holds.site', select('site', sites.map(([s]) => [s, s])));
  const kindCams = h('input', { type: 'radio', name: 'kind', value: 'cameras', id: 'hold-kind-cameras', checked: true });
  const kindSite = h('input', { type: 'radio', name: 'kind', value: 'site', id: 'hold-kind-site' });
  const kind = h(
    'fieldset',
    { class: 'checks' },
    h('legend', {}, t('holds.target')),
    h('div', { class: 'check' }, kindCams, h('label', { for: kindCams.id }, t('holds.kind_cameras'))),
    h('div', { class: 'check' }, kindSite, h('label', { for: kindSite.id }, t('holds.kind_site'))),
  );
  const sync = () => {
    camChecks.hidden = !kindCams.checked;
    siteSel.hidden = kindCams.checked;
  };
  kindCams.addEventListener('change', sync);
  kindSite.addEventListener('change', sync);
  sync();
  const keytags = h('input', { type: 'checkbox', name: 'keytags', id: 'hold-keytags' });
  const review = h('input', { type: 'date', name: 'expires_at' });
  const form = h(
    'form',
    { id: 'hold-form', class: 'card' },
    h('h2', {}, t('holds.place')),
    kind,
    camChecks,
    siteSel,
    rng.el,
    reasonField('holds.reason_hint'),
    textField('reference', 'form.reference', 'holds.reference_hint'),
    textField('requested_by', 'holds.requested_by', 'holds.requested_by_hint'),
    field('holds.review_date', review, 'holds.review_hint'),
    h('div', { class: 'check' }, keytags, h('label', { for: keytags.id }, t('holds.keytags_pin'))),
    box,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', id: 'hold-submit' }, t('holds.place_submit'))),
  );
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const { from, to } = rng.read();
      const body = { from: iso(from), to: iso(to), reason: val(form, 'reason'), keytags: keytags.checked };
      if (kindCams.checked) {
        body.cameras = [...form.querySelectorAll('input[name="cameras"]:checked')].map((c) => c.value);
      } else {
        body.site = val(form, 'site');
      }
      if (val(form, 'reference')) body.reference = val(form, 'reference');
      if (val(form, 'requested_by')) body.requested_by = val(form, 'requested_by');
      if (review.value) {
        body.expires_at = iso(zonedToUtc(review.value, '23:59:59', ctx.tz));
      }
      const hold = await post('/api/v1/holds', body);
      reload(t('holds.placed_done', { id: hold.id }));
    } catch (err) {
      showError(box, err, form);
    }
  });
  return form;
}

/** Renders `#/holds`. */
export async function render(root, ctx, message) {
  fill(root, screenTitle(t('holds.title')));
  const box = errorBox();
  put(root, box);
  if (message) put(root, notice(message));
  const reload = (msg) => render(root, ctx, msg);
  let holds;
  let cams = [];
  try {
    [holds, cams] = await Promise.all([get('/api/v1/holds'), ctx.may('cameras_status') ? listCameras() : []]);
  } catch (err) {
    showError(box, err);
    return;
  }
  if (ctx.may('place_hold')) put(root, placeForm(cams, ctx, reload));
  for (const state of STATES) {
    const list = holds.filter((x) => x.state === state).reverse();
    put(root, 
      h(
        'section',
        { class: `holds-${state}`, id: `holds-${state}` },
        h('h2', {}, t(`holds.section.${state}`, { n: list.length })),
        list.length ? list.map((x) => holdCard(x, ctx, reload)) : h('p', {}, t('holds.none')),
      ),
    );
  }
}
