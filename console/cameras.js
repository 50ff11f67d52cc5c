// Cameras per site: state, age of the last frame, the last error. A camera that is down stands
// out by colour and by text. Refreshed every 5 s while the screen is open.

import { get } from './api.js';
import { errorBox, h, screenTitle, showError, table, put, fill } from './dom.js';
import { t } from './i18n/index.js';
import { fmtDuration, fmtDateTime } from './time.js';
import { link } from './nav.js';

const STATE_MARK = { recording: '●', connecting: '◐', down: '⚠' };

/** Fetches the cameras of the user's sites. */
export function listCameras() {
  return get('/api/v1/cameras');
}

/** The cameras grouped by site, in config order: [[site, [camera...]]...]. */
export function bySite(list) {
  const sites = new Map();
  for (const c of list) {
    if (!sites.has(c.site)) sites.set(c.site, []);
    sites.get(c.site).push(c);
  }
  return [...sites.entries()];
}

function stateCell(c) {
  return h(
    'span',
    { class: `state state-${c.state}` },
    h('span', { 'aria-hidden': 'true' }, STATE_MARK[c.state] || '?'),
    ' ',
    t(`state.${c.state}`),
  );
}

function row(c, ctx, now) {
  const age = c.last_frame_at ? (now - Date.parse(c.last_frame_at)) / 1000 : null;
  return h(
    'tr',
    { class: c.state === 'down' ? 'row-down' : null, 'data-camera': c.id },
    h('th', { scope: 'row' }, c.id),
    h('td', {}, stateCell(c)),
    h(
      'td',
      {},
      age === null
        ? t('cameras.never')
        : h('span', { title: fmtDateTime(c.last_frame_at, ctx.tz, ctx.locale) }, t('cameras.ago', { age: fmtDuration(age) })),
    ),
    h('td', { class: 'num' }, c.reconnects === undefined ? '—' : String(c.reconnects)),
    h('td', { class: 'error-text' }, c.last_error || '—'),
    h('td', {}, h('a', { href: link('recordings', [c.id]), class: 'button' }, t('cameras.recordings'))),
  );
}

/** Renders the screen into `root`. */
export async function render(root, ctx) {
  const box = errorBox();
  const body = h('div', { id: 'camera-sites' });
  const summary = h('p', { class: 'summary', role: 'status' });
  put(root, screenTitle(t('cameras.title')), summary, box, body);
  const load = async () => {
    try {
      const list = await listCameras();
      const now = Date.now();
      const down = list.filter((c) => c.state === 'down').length;
      summary.textContent = t('cameras.summary', { n: list.length, down });
      summary.className = down ? 'summary summary-bad' : 'summary';
      fill(body, 
        ...bySite(list).map(([site, cams]) =>
          h(
            'section',
            { class: 'site', 'data-site': site },
            h('h2', {}, t('cameras.site', { site })),
            table(
              ['cameras.col.camera', 'cameras.col.state', 'cameras.col.last_frame', 'cameras.col.reconnects', 'cameras.col.last_error', 'cameras.col.actions'],
              cams.map((c) => row(c, ctx, now)),
              'cameras',
            ),
          ),
        ),
      );
      if (list.length === 0) fill(body, h('p', {}, t('cameras.none')));
      showError(box, null);
    } catch (err) {
      showError(box, err);
    }
  };
  await load();
  const timer = setInterval(load, 5000);
  ctx.onCleanup(() => clearInterval(timer));
}
