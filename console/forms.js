// Form parts shared by the screens: a local date+time pair read in the session's time zone
// (with a warning for times that do not exist or happen twice on DST days), a range of two of
// them, the purpose select and the reason field.

import { ApiError } from './api.js';
import { field, h, select, uid } from './dom.js';
import { t } from './i18n/index.js';
import { resolveZoned, utcToZoned } from './time.js';

/**
 * A local date and time input pair named `<name>_date` / `<name>_time`, prefilled from the
 * instant `initial` (or empty). `read()` gives the instant (Date), or throws an ApiError naming
 * the field.
 */
export function dateTime(name, labelKey, initial, tz) {
  const init = initial ? utcToZoned(initial, tz) : { date: '', time: '' };
  const dateIn = h('input', { type: 'date', name: `${name}_date`, value: init.date, required: true });
  const timeIn = h('input', { type: 'time', name: `${name}_time`, step: '1', value: init.time, required: true });
  const warn = h('p', { class: 'hint dst-warning', 'aria-live': 'polite' });
  const id = uid('g');
  const el = h(
    'fieldset',
    { class: 'datetime', id },
    h('legend', {}, t(labelKey)),
    h('div', { class: 'inline' }, field('form.date', dateIn), field('form.time', timeIn)),
    warn,
  );
  const read = () => {
    let r;
    try {
      const time = timeIn.value.length === 5 ? `${timeIn.value}:00` : timeIn.value;
      r = resolveZoned(dateIn.value, time, tz);
    } catch (e) {
      throw new ApiError(0, t('form.bad_datetime'), dateIn.value ? `${name}_time` : `${name}_date`);
    }
    warn.textContent = r.kind === 'ok' ? '' : t(`form.dst_${r.kind}`);
    return r.date;
  };
  for (const input of [dateIn, timeIn]) {
    input.addEventListener('change', () => {
      try {
        read();
      } catch (e) {
        warn.textContent = '';
      }
    });
  }
  return { el, read, dateIn, timeIn };
}

/** A from/to pair of `dateTime`s; `read()` -> {from, to} (Dates), checking from < to. */
export function range(tz, from, to) {
  const a = dateTime('from', 'form.from', from, tz);
  const b = dateTime('to', 'form.to', to, tz);
  return {
    el: h('div', { class: 'range' }, a.el, b.el),
    read: () => {
      const f = a.read();
      const e = b.read();
      if (e <= f) throw new ApiError(0, t('form.to_after_from'), 'to_time');
      return { from: f, to: e };
    },
    from: a,
    to: b,
  };
}

/** A select of purposes (`purposes`: codes), named `purpose`. */
export function purposeSelect(purposes, value) {
  return field(
    'form.purpose',
    select(
      'purpose',
      purposes.map((p) => [p, t(`purpose.${p}`)]),
      value && purposes.includes(value) ? value : purposes[0],
    ),
  );
}

/** The reason textarea (required), named `reason`. */
export function reasonField(hintKey = 'form.reason_hint', name = 'reason', labelKey = 'form.reason') {
  return field(labelKey, h('textarea', { name, rows: '2', required: true, maxlength: '1000' }), hintKey);
}

/** A one-line text input, named `name`. */
export function textField(name, labelKey, hintKey, required = false) {
  return field(labelKey, h('input', { type: 'text', name, required, maxlength: '200' }), hintKey);
}

/** The trimmed value of the form control named `name` ('' when absent). */
export function val(form, name) {
  const el = form.elements.namedItem(name);
  return el ? String(el.value).trim() : '';
}

/**
 * Recipient and reference inputs; required (and marked so) while the form's purpose is one of
 * the hand-over purposes, the reference also whenever a recipient is given.
 */
export function handOverFields(form, alwaysShow) {
  const recipient = h('input', { type: 'text', name: 'recipient', maxlength: '200' });
  const reference = h('input', { type: 'text', name: 'reference', maxlength: '200' });
  const wrap = h(
    'div',
    { class: 'handover' },
    field('form.recipient', recipient, 'form.recipient_hint'),
    field('form.reference', reference, 'form.reference_hint'),
  );
  const update = () => {
    const purpose = form.elements.namedItem('purpose');
    const needs = !!purpose && ['police', 'hand-over'].includes(purpose.value);
    recipient.required = needs;
    reference.required = needs || recipient.value.trim() !== '';
    wrap.hidden = !alwaysShow && !needs;
  };
  form.addEventListener('change', update);
  recipient.addEventListener('input', update);
  return { el: wrap, update };
}
