// Viewing footage: purpose and reason first (POST /api/v1/cameras/{id}/views writes the
// logbook entry), then a <video> playing the returned URL. The browser's range requests for
// seeking all carry the view id, so they share that one logbook entry.

import { post, seg } from './api.js';
import { errorBox, h, notice, screenTitle, showError, put, fill } from './dom.js';
import { handOverFields, purposeSelect, reasonField, val } from './forms.js';
import { t } from './i18n/index.js';
import { link } from './nav.js';
import { fmtDateTime, fmtDuration } from './time.js';

/** The range of a footage screen from its query, as shown to people. */
export function rangeSummary(ctx, from, to) {
  return h(
    'dl',
    { class: 'facts' },
    h('dt', {}, t('form.from')),
    h('dd', {}, fmtDateTime(from, ctx.tz, ctx.locale, true)),
    h('dt', {}, t('form.to')),
    h('dd', {}, fmtDateTime(to, ctx.tz, ctx.locale, true)),
    h('dt', {}, t('footage.length')),
    h('dd', {}, fmtDuration((Date.parse(to) - Date.parse(from)) / 1000)),
  );
}

/** Renders `#/view/<camera>?from=&to=`. */
export async function render(root, ctx) {
  const cam = ctx.params[0];
  const from = ctx.query.get('from');
  const to = ctx.query.get('to');
  put(root, screenTitle(t('view.title', { camera: cam })));
  if (!from || !to || Number.isNaN(Date.parse(from)) || Number.isNaN(Date.parse(to))) {
    put(root, notice(t('footage.no_range'), 'warn'), h('a', { href: link('recordings', [cam]) }, t('footage.back')));
    return;
  }
  const box = errorBox();
  const form = h('form', { id: 'view-form', class: 'card' });
  const ho = handOverFields(form, false);
  put(form, 
    h('p', { class: 'lead' }, t('view.intro')),
    purposeSelect(ctx.purposes('view'), ctx.query.get('purpose')),
    reasonField(),
    ho.el,
    box,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', id: 'view-submit' }, t('view.submit')), h('a', { class: 'button', href: link('recordings', [cam]) }, t('form.cancel'))),
  );
  ho.update();
  const result = h('div', { id: 'view-result' });
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const body = { from, to, purpose: val(form, 'purpose'), reason: val(form, 'reason') };
    if (val(form, 'recipient')) body.recipient = val(form, 'recipient');
    if (val(form, 'reference')) body.reference = val(form, 'reference');
    try {
      const v = await post(`/api/v1/cameras/${seg(cam)}/views`, body);
      showError(box, null, form);
      form.hidden = true;
      const video = h('video', { id: 'player', controls: true, preload: 'auto', playsinline: true, src: v.url });
      video.muted = true;
      fill(result, 
        notice(t('view.logged', { seq: v.logbook_seq })),
        h('div', { class: 'player' }, video),
        h(
          'dl',
          { class: 'facts' },
          h('dt', {}, t('footage.clip')),
          h('dd', {}, `${fmtDateTime(v.clip_start, ctx.tz, ctx.locale)} – ${fmtDateTime(v.clip_end, ctx.tz, ctx.locale)}`),
          h('dt', {}, t('form.purpose')),
          h('dd', {}, t(`purpose.${body.purpose}`)),
          h('dt', {}, t('form.reason')),
          h('dd', {}, body.reason),
          h('dt', {}, t('view.expires')),
          h('dd', {}, fmtDateTime(v.expires_at, ctx.tz, ctx.locale)),
        ),
        h('p', {}, h('a', { class: 'button', href: link('recordings', [cam]) }, t('footage.back'))),
      );
      video.focus();
    } catch (err) {
      showError(box, err, form);
    }
  });
  put(root, h('p', {}, t('footage.camera', { camera: cam })), rangeSummary(ctx, from, to), form, result);
}
