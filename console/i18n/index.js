// The strings of the console: `t(key, vars)` looks `key` up in the current language's table
// (i18n/nl.js, i18n/en.js: the same keys) and fills `{name}` placeholders from `vars`. A key
// missing from the table comes back as `⟦key⟧`, so the browser test finds it on any screen.
// Dutch by default; the choice is remembered in localStorage `holdfast.lang` (not a secret).

import nl from './nl.js';
import en from './en.js';

const TABLES = { nl, en };
const LOCALES = { nl: 'nl-NL', en: 'en-GB' };
const KEY = 'holdfast.lang';
let current = 'nl';

/** Reads the remembered language (Dutch when none or unknown). */
export function initLang() {
  try {
    const v = window.localStorage.getItem(KEY);
    if (v && TABLES[v]) current = v;
  } catch (e) {
    current = 'nl';
  }
  document.documentElement.lang = current;
}

/** Switches the language and remembers it. */
export function setLang(code) {
  if (!TABLES[code]) return;
  current = code;
  document.documentElement.lang = code;
  try {
    window.localStorage.setItem(KEY, code);
  } catch (e) {
    // private mode: the choice lasts this page only
  }
}

/** The current language code (`nl` or `en`). */
export function lang() {
  return current;
}

/** The Intl locale of the current language. */
export function locale() {
  return LOCALES[current];
}

/** The string for `key` in the current language, `⟦key⟧` when it is missing. */
export function t(key, vars) {
  const s = TABLES[current][key];
  if (s === undefined) return `⟦${key}⟧`;
  if (!vars) return s;
  return s.replace(/\{(\w+)\}/g, (m, k) => (k in vars ? String(vars[k]) : m));
}

/** `t(key)` when the table has `key`, else `fallback` (for names from the config, like roles). */
export function tOr(key, fallback) {
  return TABLES[current][key] === undefined ? fallback : TABLES[current][key];
}

/** Both tables, for the test that their key sets are equal. */
export const tables = TABLES;
