// Building the page without innerHTML: `h(tag, props, ...children)` creates an element, sets
// attributes and listeners from `props`, and appends children (text becomes text nodes, so data
// never turns into markup). Plus small form helpers shared by the screens.

import { t } from './i18n/index.js';

let nextId = 0;

/** A fresh element id ("f12"), for labels' `for`. */
export function uid(prefix = 'f') {
  nextId += 1;
  return `${prefix}${nextId}`;
}

/** `document.createElement(tag)` with props (attributes, `class`, `on<event>`, `value`, `checked`). */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = Array.isArray(v) ? v.filter(Boolean).join(' ') : v;
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'value' || k === 'checked' || k === 'selected') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

/** Appends children: nodes as they are, strings and numbers as text, arrays flattened. */
export function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
  return el;
}

/** A label + control pair in a `div.field`; the control gets an id and the label points at it. */
export function field(labelKey, control, hintKey) {
  if (!control.id) control.id = uid();
  const hintEl = hintKey ? h('p', { class: 'hint', id: `${control.id}-hint` }, t(hintKey)) : null;
  if (hintEl) control.setAttribute('aria-describedby', hintEl.id);
  return h('div', { class: 'field' }, h('label', { for: control.id }, t(labelKey)), control, hintEl);
}

/** A `<select>` of `[value, labelText]` pairs. */
export function select(name, options, value) {
  return h(
    'select',
    { name },
    options.map(([v, label]) => h('option', { value: v, selected: v === value }, label)),
  );
}

/** A region where a screen shows errors (role=alert). */
export function errorBox() {
  return h('div', { class: 'error-box', role: 'alert', 'aria-live': 'assertive' });
}

/**
 * Shows an API error (its `error` text, and the field it names) in `box`; marks the form's
 * control named by the field and moves the focus there.
 */
export function showError(box, err, form) {
  box.replaceChildren();
  if (form) {
    for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
  }
  if (!err) return;
  const parts = [h('strong', {}, t('error.title')), ' ', err.message || String(err)];
  if (err.field) parts.push(' ', h('span', { class: 'error-field' }, t('error.field', { field: err.field })));
  box.appendChild(h('p', { class: 'error' }, parts));
  if (form && err.field) {
    const name = String(err.field).replace(/\[\d+\]$/, '');
    const el = form.querySelector(`[name="${CSS.escape(name)}"]`);
    if (el) {
      el.setAttribute('aria-invalid', 'true');
      el.focus();
    }
  }
}

/** A short status line (role=status) with a message. */
export function notice(text, kind = 'ok') {
  return h('p', { class: `notice notice-${kind}`, role: 'status' }, text);
}

/** A table from a header row of i18n keys and rows of cells. */
export function table(headKeys, rows, cls) {
  return h(
    'div',
    { class: 'table-wrap' },
    h(
      'table',
      { class: cls },
      h('thead', {}, h('tr', {}, headKeys.map((k) => h('th', { scope: 'col' }, t(k))))),
      h('tbody', {}, rows),
    ),
  );
}

/** A heading for a screen; gets the focus after navigation (for keyboard and screen readers). */
export function screenTitle(text) {
  return h('h1', { tabindex: '-1', id: 'screen-title' }, text);
}

/** Appends children to `el` (null and false skipped, arrays flattened, text as text nodes). */
export function put(el, ...children) {
  return append(el, children);
}

/** Replaces `el`'s children (as `put`). */
export function fill(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}
