// Exporting footage: purpose, reason, recipient and reference (required for police and
// hand-over), then POST /api/v1/cameras/{id}/exports, the download link and the receipt. The
// receipt (`#/receipt/<export id>`, from GET /api/v1/exports/{id}) is a printable page with
// everything a hand-over needs and lines for both signatures.

import { get, post, seg } from './api.js';
import { errorBox, h, notice, screenTitle, showError, put, fill } from './dom.js';
import { handOverFields, purposeSelect, reasonField, val } from './forms.js';
import { t } from './i18n/index.js';
import { link } from './nav.js';
import { fmtDateTime } from './time.js';
import { rangeSummary } from './view.js';

/** Bytes for people: "12.3 MB (12 345 678 bytes)". */
export function fmtSize(n, locale) {
  const exact = new Intl.NumberFormat(locale).format(n);
  const mb = new Intl.NumberFormat(locale, { maximumFractionDigits: 1 }).format(n / 1e6);
  return t('export.size_value', { mb, bytes: exact });
}

/** Renders `#/export/<camera>?from=&to=[&purpose=]`. */
export async function render(root, ctx) {
  const cam = ctx.params[0];
  const from = ctx.query.get('from');
  const to = ctx.query.get('to');
  put(root, screenTitle(t('export.title', { camera: cam })));
  if (!from || !to || Number.isNaN(Date.parse(from)) || Number.isNaN(Date.parse(to))) {
    put(root, notice(t('footage.no_range'), 'warn'), h('a', { href: link('recordings', [cam]) }, t('footage.back')));
    return;
  }
  const box = errorBox();
  const form = h('form', { id: 'export-form', class: 'card' });
  const ho = handOverFields(form, true);
  const submit = h('button', { type: 'submit', class: 'primary', id: 'export-submit' }, t('export.submit'));
  put(form, 
    h('p', { class: 'lead' }, t('export.intro')),
    purposeSelect(ctx.purposes('export'), ctx.query.get('purpose')),
    reasonField(),
    ho.el,
    box,
    h('div', { class: 'actions' }, submit, h('a', { class: 'button', href: link('recordings', [cam]) }, t('form.cancel'))),
  );
  ho.update();
  const result = h('div', { id: 'export-result' });
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const body = { from, to, purpose: val(form, 'purpose'), reason: val(form, 'reason') };
    if (val(form, 'recipient')) body.recipient = val(form, 'recipient');
    if (val(form, 'reference')) body.reference = val(form, 'reference');
    submit.disabled = true;
    fill(result, notice(t('export.working'), 'info'));
    try {
      const x = await post(`/api/v1/cameras/${seg(cam)}/exports`, body);
      showError(box, null, form);
      form.hidden = true;
      fill(result, 
        notice(t('export.done', { seq: x.logbook_seq })),
        receiptFacts(x, ctx),
        h(
          'div',
          { class: 'actions' },
          h('a', { class: 'button primary', id: 'export-download', href: x.url, download: x.file_name }, t('export.download')),
          h('a', { class: 'button', id: 'receipt-link', href: link('receipt', [x.export]) }, t('export.receipt')),
        ),
      );
    } catch (err) {
      fill(result);
      showError(box, err, form);
    } finally {
      submit.disabled = false;
    }
  });
  put(root, h('p', {}, t('footage.camera', { camera: cam })), rangeSummary(ctx, from, to), form, result);
}

/** The facts of an export as a definition list (screen and receipt). */
function receiptFacts(x, ctx) {
  const rows = [
    ['receipt.camera', x.camera, 'receipt-camera'],
    ['receipt.range', `${fmtDateTime(x.from, ctx.tz, ctx.locale, true)} – ${fmtDateTime(x.to, ctx.tz, ctx.locale, true)}`, 'receipt-range'],
    ['receipt.clip', `${fmtDateTime(x.clip_start, ctx.tz, ctx.locale, true)} – ${fmtDateTime(x.clip_end, ctx.tz, ctx.locale, true)}`],
    ['form.purpose', x.purpose ? t(`purpose.${x.purpose}`) : t('purpose.incident')],
    ['form.reason', x.reason],
    ['form.recipient', x.recipient || '—', 'receipt-recipient'],
    ['form.reference', x.reference || '—', 'receipt-reference'],
    ['receipt.file', x.file_name, 'receipt-file'],
    ['receipt.size', fmtSize(x.size, ctx.locale), 'receipt-size'],
    ['receipt.sha256', x.sha256, 'receipt-sha256'],
    ['receipt.seq', String(x.logbook_seq), 'receipt-seq'],
    ['receipt.user', x.user],
    ['receipt.created', fmtDateTime(x.created_at, ctx.tz, ctx.locale, true)],
  ];
  return h(
    'dl',
    { class: 'facts receipt-facts' },
    rows.map(([k, v, id]) => [h('dt', {}, t(k)), h('dd', { id, class: k === 'receipt.sha256' ? 'hash' : null }, v)]),
  );
}

function signature(titleKey) {
  return h(
    'div',
    { class: 'signature' },
    h('h2', {}, t(titleKey)),
    ['receipt.sig_name', 'receipt.sig_org', 'receipt.sig_date', 'receipt.sig_sign'].map((k) =>
      h('p', { class: 'sig-line' }, h('span', {}, t(k)), h('span', { class: 'line', 'aria-hidden': 'true' })),
    ),
  );
}

/** Renders the printable receipt `#/receipt/<export id>`. */
export async function renderReceipt(root, ctx) {
  const id = ctx.params[0];
  put(root, screenTitle(t('receipt.title')));
  const box = errorBox();
  put(root, box);
  let x;
  try {
    x = await get(`/api/v1/exports/${seg(id)}`);
  } catch (err) {
    showError(box, err);
    return;
  }
  root.classList.add('receipt');
  put(root, 
    h('p', { class: 'lead' }, t('receipt.intro')),
    receiptFacts(x, ctx),
    h('p', { class: 'tz-note' }, t('receipt.tz', { tz: ctx.tz })),
    h('div', { class: 'signatures' }, signature('receipt.handed_by'), signature('receipt.received_by')),
    h(
      'div',
      { class: 'actions no-print' },
      h('button', { type: 'button', id: 'receipt-print', class: 'primary', onclick: () => window.print() }, t('receipt.print')),
      h('a', { class: 'button', href: x.url, download: x.file_name }, t('export.download')),
    ),
  );
}
