// Key tags: a logged query by tag or by door over a range, with its purpose and reason
// (GET /api/v1/keytags/events). By tag for tag-check, subject-access or police; by door for
// witness-search or police; police also needs recipient and reference.

import { get } from './api.js';
import { errorBox, field, h, notice, screenTitle, select, showError, table, put, fill } from './dom.js';
import { handOverFields, range, reasonField, val } from './forms.js';
import { t } from './i18n/index.js';
import { fmtDateTime, iso } from './time.js';

const PURPOSES = { tag: ['tag-check', 'subject-access', 'police'], door: ['witness-search', 'police'] };

/** Renders `#/keytags`. */
export async function render(root, ctx) {
  put(root, screenTitle(t('keytags.title')), h('p', { class: 'lead' }, t('keytags.intro')));
  const box = errorBox();
  const byTag = h('input', { type: 'radio', name: 'by', value: 'tag', id: 'kt-by-tag', checked: true });
  const byDoor = h('input', { type: 'radio', name: 'by', value: 'door', id: 'kt-by-door' });
  const value = h('input', { type: 'text', name: 'value', id: 'kt-value', required: true, maxlength: '128' });
  const valueField = field('keytags.tag', value);
  const purposeSel = select('purpose', []);
  const now = Date.now();
  const rng = range(ctx.tz, now - 86400000, now);
  const form = h('form', { id: 'keytags-form', class: 'card' });
  const ho = handOverFields(form, false);
  const sync = () => {
    const kind = byTag.checked ? 'tag' : 'door';
    valueField.querySelector('label').textContent = t(`keytags.${kind}`);
    value.name = kind;
    const keep = purposeSel.value;
    fill(purposeSel, ...PURPOSES[kind].map((p) => h('option', { value: p, selected: p === keep }, t(`purpose.${p}`))));
    ho.update();
  };
  byTag.addEventListener('change', sync);
  byDoor.addEventListener('change', sync);
  put(form, 
    h(
      'fieldset',
      { class: 'checks' },
      h('legend', {}, t('keytags.by')),
      h('div', { class: 'check' }, byTag, h('label', { for: byTag.id }, t('keytags.by_tag'))),
      h('div', { class: 'check' }, byDoor, h('label', { for: byDoor.id }, t('keytags.by_door'))),
    ),
    valueField,
    rng.el,
    field('form.purpose', purposeSel),
    reasonField(),
    ho.el,
    box,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', id: 'keytags-submit' }, t('keytags.search'))),
  );
  sync();
  const out = h('div', { id: 'keytags-result', 'aria-live': 'polite' });
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const { from, to } = rng.read();
      const kind = byTag.checked ? 'tag' : 'door';
      const res = await get('/api/v1/keytags/events', {
        [kind]: value.value.trim(),
        from: iso(from),
        to: iso(to),
        purpose: purposeSel.value,
        reason: val(form, 'reason'),
        recipient: val(form, 'recipient'),
        reference: val(form, 'reference'),
      });
      showError(box, null, form);
      fill(out, 
        notice(t('keytags.logged', { seq: res.logbook_seq, n: res.events.length })),
        res.events.length
          ? table(
              ['keytags.col.time', 'keytags.col.tag', 'keytags.col.door', 'keytags.col.site'],
              res.events.map((e) => h('tr', {}, h('td', {}, fmtDateTime(e.time, ctx.tz, ctx.locale)), h('td', {}, e.tag), h('td', {}, e.door), h('td', {}, e.site))),
              'keytags',
            )
          : h('p', {}, t('keytags.none')),
      );
    } catch (err) {
      showError(box, err, form);
    }
  });
  put(root, form, out);
}
