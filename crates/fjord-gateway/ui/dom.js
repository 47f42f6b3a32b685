// Builds DOM nodes. Every string becomes a text node or a property value: never HTML, so
// user-controlled names, labels, log lines and response bodies cannot inject markup or code.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (/^on/i.test(k)) throw new Error('no inline handlers: use addEventListener');
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = String(v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k in el && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

// A key/value table (env, labels, annotations).
export function kvTable(obj, caption) {
  const entries = Object.entries(obj || {});
  if (!entries.length) return h('p', { class: 'muted' }, `No ${caption.toLowerCase()}.`);
  return h('table', { class: 'kv' },
    h('caption', {}, caption),
    h('tbody', {}, entries.map(([k, v]) => h('tr', {}, h('th', { scope: 'row' }, k), h('td', {}, String(v))))));
}

export function field(label, input, hint) {
  const id = input.id || ('f' + Math.random().toString(36).slice(2));
  input.id = id;
  const err = h('span', { class: 'field-error', role: 'alert' });
  input.setAttribute('aria-describedby', id + '-err');
  err.id = id + '-err';
  return h('div', { class: 'field' }, h('label', { for: id }, label), input, hint ? h('small', { class: 'muted' }, hint) : null, err);
}

// One formatter per precision: toLocaleString makes a new one per call, which is most of the
// time of drawing 1,000 rows.
const FORMATS = new Map();
function format(digits) {
  let f = FORMATS.get(digits);
  if (!f) { f = new Intl.NumberFormat('en', { maximumFractionDigits: digits }); FORMATS.set(digits, f); }
  return f;
}

export function fmtNum(n, digits = 1) {
  if (n === null || n === undefined || Number.isNaN(n)) return '–';
  return format(Math.abs(n) >= 1000 ? 0 : digits).format(Number(n));
}

export function message(el, text, kind = 'error') {
  clear(el);
  if (text) append(el, [h('p', { class: kind, role: kind === 'error' ? 'alert' : 'status' }, text)]);
}
