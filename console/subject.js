// A data-subject request: a date, a start time and a duration in local time ("21:00 tot
// 21:15"), cameras of the user's sites; shows what is still there per camera and leads to the
// subject-access export (and viewing, where the role may) of that window.

import { get, seg } from './api.js';
import { errorBox, field, h, screenTitle, showError, select, put, fill } from './dom.js';
import { t } from './i18n/index.js';
import { link } from './nav.js';
import { listCameras } from './cameras.js';
import { fmtTime, iso, resolveZoned, todayIn } from './time.js';

const DURATIONS = [5, 10, 15, 30, 60, 120, 240];

/** Renders `#/subject`. */
export async function render(root, ctx) {
  put(root, screenTitle(t('subject.title')), h('p', { class: 'lead' }, t('subject.intro')));
  const box = errorBox();
  put(root, box);
  let cams;
  try {
    cams = await listCameras();
  } catch (err) {
    showError(box, err);
    return;
  }
  const date = h('input', { type: 'date', name: 'date', required: true, value: ctx.query.get('date') || todayIn(ctx.tz) });
  const start = h('input', { type: 'time', name: 'start', required: true, value: ctx.query.get('start') || '21:00' });
  const duration = select('duration', DURATIONS.map((m) => [String(m), t('subject.minutes', { n: m })]), ctx.query.get('duration') || '15');
  const camBoxes = h(
    'fieldset',
    { class: 'checks' },
    h('legend', {}, t('subject.cameras')),
    cams.map((c) => {
      const cb = h('input', { type: 'checkbox', name: 'camera', value: c.id, id: `subject-cam-${c.id}`, checked: true });
      return h('div', { class: 'check' }, cb, h('label', { for: cb.id }, `${c.id} (${c.site})`));
    }),
  );
  const form = h(
    'form',
    { id: 'subject-form', class: 'card' },
    h('div', { class: 'inline' }, field('form.date', date), field('subject.start', start), field('subject.duration', duration)),
    camBoxes,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', id: 'subject-submit' }, t('subject.search'))),
  );
  const out = h('div', { id: 'subject-result', 'aria-live': 'polite' });
  put(root, form, out);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    let from;
    try {
      from = resolveZoned(date.value, start.value.slice(0, 5), ctx.tz).date;
    } catch (e) {
      showError(box, { message: t('form.bad_datetime'), field: 'start' }, form);
      return;
    }
    showError(box, null, form);
    const to = new Date(from.getTime() + Number(duration.value) * 60000);
    const chosen = [...form.querySelectorAll('input[name="camera"]:checked')].map((c) => c.value);
    const windowText = t('subject.window', {
      from: fmtTime(from, ctx.tz, ctx.locale).slice(0, 5),
      to: fmtTime(to, ctx.tz, ctx.locale).slice(0, 5),
    });
    const sections = await Promise.all(chosen.map((cam) => cameraResult(cam, from, to, ctx)));
    fill(out, h('h2', { id: 'subject-window' }, `${date.value}: ${windowText}`), ...sections);
  });
}

async function cameraResult(cam, from, to, ctx) {
  const sec = h('section', { class: 'card subject-camera', 'data-camera': cam }, h('h3', {}, cam));
  try {
    const rec = await get(`/api/v1/cameras/${seg(cam)}/recordings`, { from: iso(from), to: iso(to) });
    if (rec.intervals.length === 0) {
      put(sec, h('p', { class: 'nothing' }, t('subject.nothing')));
      return sec;
    }
    put(sec, 
      h('p', {}, t('subject.present')),
      h(
        'ul',
        {},
        rec.intervals.map((i) => h('li', {}, `${fmtTime(i.from, ctx.tz, ctx.locale)} – ${fmtTime(i.to, ctx.tz, ctx.locale)}`)),
      ),
    );
    const actions = [];
    const q = { from: iso(from), to: iso(to), purpose: 'subject-access' };
    if (ctx.purposes('export').includes('subject-access')) {
      actions.push(h('a', { class: 'button primary', href: link('export', [cam], q) }, t('subject.export')));
    }
    if (ctx.purposes('view').includes('subject-access')) {
      actions.push(h('a', { class: 'button', href: link('view', [cam], q) }, t('subject.view')));
    }
    put(sec, h('div', { class: 'actions' }, actions));
  } catch (err) {
    const box = errorBox();
    put(sec, box);
    showError(box, err);
  }
  return sec;
}
