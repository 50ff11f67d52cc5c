// The console's shell: the session (GET /api/v1/session on load; sign-in exchanges a token for
// the HttpOnly cookie and keeps only the CSRF token, in memory), the header (navigation showing
// only the screens the role may use, the user, NL/EN, sign out) and a router by
// `location.hash` (`#/screen/arg?query`) that hands each screen a context.

import { initLang, setLang, lang, locale, t, tOr } from './i18n/index.js';
import { ApiError, del, get, onSessionExpired, post, setCsrf } from './api.js';
import { errorBox, field, h, notice, screenTitle, showError, fill } from './dom.js';
import { PURPOSES } from './nav.js';
import * as cameras from './cameras.js';
import * as recordings from './recordings.js';
import * as view from './view.js';
import * as exportScreen from './export.js';
import * as subject from './subject.js';
import * as holds from './holds.js';
import * as logbook from './logbook.js';
import * as keytags from './keytags.js';


// Screens by route name: `nav` (i18n key of the menu entry, absent for screens reached from
// another one) and `allowed(session)`.
const SCREENS = {
  cameras: { mod: cameras, nav: 'nav.cameras', allowed: (s) => has(s, 'cameras_status') },
  recordings: { mod: recordings, allowed: (s) => has(s, 'cameras_status') },
  view: { mod: view, allowed: (s) => purposesOf(s, 'view').length > 0 },
  export: { mod: exportScreen, allowed: (s) => purposesOf(s, 'export').length > 0 },
  receipt: { mod: exportScreen, render: exportScreen.renderReceipt, allowed: (s) => purposesOf(s, 'export').length > 0 },
  subject: {
    mod: subject,
    nav: 'nav.subject',
    allowed: (s) => has(s, 'cameras_status') && purposesOf(s, 'export').includes('subject-access'),
  },
  holds: {
    mod: holds,
    nav: 'nav.holds',
    allowed: (s) => has(s, 'place_hold') || has(s, 'release_hold') || has(s, 'logbook_read'),
  },
  logbook: { mod: logbook, nav: 'nav.logbook', allowed: (s) => has(s, 'logbook_read') },
  keytags: { mod: keytags, nav: 'nav.keytags', allowed: (s) => has(s, 'keytags_read') },
};

let session = null;
let cleanups = [];
let message = null;

function has(s, perm) {
  return !!s && Array.isArray(s.permissions) && s.permissions.includes(perm);
}

function purposesOf(s, kind) {
  const f = s && s.footage ? s.footage[kind] : null;
  if (f === 'any') return PURPOSES.slice();
  return Array.isArray(f) ? PURPOSES.filter((p) => f.includes(p)) : [];
}

function firstScreen(s) {
  for (const [name, sc] of Object.entries(SCREENS)) if (sc.nav && sc.allowed(s)) return name;
  return null;
}

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [path, qs] = raw.split('?');
  // A malformed link (`#/%E0`) leads to the first screen rather than a blank page.
  const decode = (p) => {
    try {
      return decodeURIComponent(p);
    } catch (e) {
      return '';
    }
  };
  const parts = path.split('/').filter(Boolean).map(decode);
  return { name: parts[0] || '', params: parts.slice(1), query: new URLSearchParams(qs || '') };
}

function runCleanups() {
  for (const fn of cleanups) {
    try {
      fn();
    } catch (e) {
      // a screen's timer is gone already
    }
  }
  cleanups = [];
}

function renderHeader() {
  const header = document.getElementById('top');
  const langs = h(
    'div',
    { class: 'lang', role: 'group', 'aria-label': t('lang.label') },
    ['nl', 'en'].map((code) =>
      h(
        'button',
        {
          type: 'button',
          id: `lang-${code}`,
          lang: code,
          'aria-pressed': String(lang() === code),
          onclick: () => {
            setLang(code);
            renderHeader();
            route();
          },
        },
        code.toUpperCase(),
      ),
    ),
  );
  const brand = h('a', { class: 'brand', href: '#/' }, t('app.name'));
  const parts = [brand];
  if (session) {
    const nav = h(
      'nav',
      { 'aria-label': t('nav.label') },
      h(
        'ul',
        {},
        Object.entries(SCREENS)
          .filter(([, sc]) => sc.nav && sc.allowed(session))
          .map(([name, sc]) => h('li', {}, h('a', { href: `#/${name}`, id: `nav-${name}`, 'data-screen': name }, t(sc.nav)))),
      ),
    );
    const who = h(
      'p',
      { class: 'who' },
      h('span', { id: 'who-user' }, session.user),
      ' ',
      h('span', { class: 'role' }, `(${tOr(`role.${session.role}`, session.role)})`),
    );
    const out = h('button', { type: 'button', id: 'sign-out', onclick: signOut }, t('signout.button'));
    parts.push(nav, h('div', { class: 'user-bar' }, who, langs, out));
  } else {
    parts.push(h('div', { class: 'user-bar' }, langs));
  }
  fill(header, ...parts);
  document.title = t('app.title');
  markCurrentNav();
}

function markCurrentNav() {
  const { name } = parseHash();
  for (const a of document.querySelectorAll('#top nav a')) {
    if (a.dataset.screen === name || (name === 'recordings' && a.dataset.screen === 'cameras')) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

async function signOut() {
  try {
    await del('/api/v1/session');
  } catch (e) {
    // gone already: the page forgets it either way
  }
  session = null;
  setCsrf(null);
  message = t('signout.done');
  location.hash = '#/';
  renderHeader();
  route();
}

function renderSignIn(main) {
  const box = errorBox();
  const input = h('input', {
    type: 'password',
    name: 'token',
    id: 'token',
    autocomplete: 'off',
    required: true,
    spellcheck: 'false',
  });
  const form = h(
    'form',
    { id: 'sign-in', class: 'card narrow' },
    field('signin.token', input, 'signin.token_hint'),
    box,
    h('button', { type: 'submit', class: 'primary' }, t('signin.button')),
  );
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const token = input.value;
    input.value = '';
    try {
      const s = await post('/api/v1/session', { token });
      startSession(s);
      message = null;
      const first = firstScreen(s);
      location.hash = first ? `#/${first}` : '#/';
      renderHeader();
      route();
    } catch (err) {
      showError(box, err, form);
      input.focus();
    }
  });
  fill(main, 
    ...[screenTitle(t('signin.title')), message ? notice(message) : null, h('p', { class: 'lead' }, t('signin.intro')), form].filter(Boolean),
  );
  input.focus();
}

function startSession(s) {
  session = s;
  setCsrf(s.csrf_token);
}

function context(params, query) {
  return {
    session,
    tz: session.timezone || 'Europe/Amsterdam',
    locale: locale(),
    params,
    query,
    may: (perm) => has(session, perm),
    purposes: (kind) => purposesOf(session, kind),
    onCleanup: (fn) => cleanups.push(fn),
    go: (hash) => {
      location.hash = hash;
    },
  };
}

/** Renders the screen the hash names (or sign-in, or the first allowed screen). */
export function route() {
  runCleanups();
  const main = document.getElementById('main');
  if (!session) {
    renderSignIn(main);
    return;
  }
  const { name, params, query } = parseHash();
  const sc = SCREENS[name];
  if (!sc || !sc.allowed(session)) {
    const first = firstScreen(session);
    if (first && name !== first) {
      location.replace(`#/${first}`);
      return;
    }
    fill(main, screenTitle(t('app.name')), notice(t('nav.nothing'), 'warn'));
    return;
  }
  markCurrentNav();
  const root = h('div', { class: `screen screen-${name}`, id: `screen-${name}` });
  fill(main, root);
  const render = sc.render || sc.mod.render;
  Promise.resolve(render(root, context(params, query))).catch((err) => {
    const box = errorBox();
    root.appendChild(box);
    showError(box, err instanceof ApiError ? err : new ApiError(0, String(err)));
  });
  const title = root.querySelector('h1');
  if (title) title.focus({ preventScroll: true });
}

async function boot() {
  initLang();
  onSessionExpired((err) => {
    if (!session) return;
    session = null;
    setCsrf(null);
    message = err.message;
    renderHeader();
    route();
  });
  try {
    startSession(await get('/api/v1/session'));
  } catch (e) {
    session = null;
  }
  renderHeader();
  window.addEventListener('hashchange', () => {
    route();
  });
  route();
  document.body.dataset.ready = 'true';
}

boot();
