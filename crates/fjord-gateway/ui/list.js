// The functions list: one row per function, updated in place every few seconds (rows are
// keyed by name and only changed cells are written, so 1,000 functions stay cheap).
import { api } from './api.js';
import { h, clear, fmtNum, message } from './dom.js';

const REFRESH_MS = 5000;

export function statusOf(f) {
  const fj = f.fjord || {};
  const rollout = fj.rollout || {};
  if (fj.pull) return { text: 'pulling image', cls: 'scaling' };
  if (rollout.state === 'failed' || (fj.lastError && f.availableReplicas === 0 && f.replicas > 0)) {
    return { text: `failing: ${fj.lastError || 'rollout failed'}`, cls: 'failing' };
  }
  if (f.replicas === 0 && f.availableReplicas === 0) return { text: 'at zero', cls: 'zero' };
  if (f.availableReplicas < f.replicas || rollout.state === 'progressing') return { text: 'scaling', cls: 'scaling' };
  return { text: 'ready', cls: 'ready' };
}

function shortImage(f) {
  const d = f.fjord && f.fjord.digest;
  return d ? `${f.image} (${d.slice(0, 19)})` : f.image;
}

const COLUMNS = ['Name', 'Namespace', 'Runtime', 'Image / digest', 'Ready / desired', 'Invocations', 'Req/s', 'Errors', 'p50 / p99 ms', 'Cold starts', 'Status'];
const SPARK = 6; // the column with the sparkline

// A small line of requests/s, drawn on a canvas (no per-row chart objects). Idle functions
// get none: a 2D context per row is what 1,000 idle rows would cost most.
function drawSpark(r, values) {
  const idle = !values || values.length < 2 || values.every((v) => !v);
  if (idle && !r.sparkDrawn) return;
  const canvas = r.spark;
  const ctx = canvas.getContext('2d');
  const w = canvas.width;
  const hgt = canvas.height;
  ctx.clearRect(0, 0, w, hgt);
  r.sparkDrawn = !idle;
  if (idle) return;
  const max = Math.max(...values, 0.001);
  ctx.strokeStyle = '#2b6cb0';
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  values.forEach((v, i) => {
    const x = (i / (values.length - 1)) * (w - 2) + 1;
    const y = hgt - 1 - (v / max) * (hgt - 2);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
}

// New rows are clones of one template row (cheaper than building each cell).
let template;
function newRow(f) {
  if (!template) {
    template = h('tr', {}, COLUMNS.map((_, i) => h('td', {}, i === 0 ? h('a') : null)));
    template.children[SPARK].append(h('canvas', { width: 60, height: 16, class: 'spark', 'aria-hidden': 'true' }), ' ', h('span'));
  }
  const tr = template.cloneNode(true);
  const tds = [...tr.children];
  const link = tds[0].firstChild;
  link.href = `#/fn/${encodeURIComponent(f.namespace)}/${encodeURIComponent(f.name)}`;
  link.textContent = f.name;
  tr.dataset.name = f.name;
  return { tr, tds, values: [], spark: tds[SPARK].firstChild, rate: tds[SPARK].lastChild, sparkKey: '', sparkDrawn: false };
}

function pct(x) {
  return x === null || x === undefined ? '–' : `${fmtNum(x * 100, 1)} %`;
}

function cellsOf(f, sum) {
  const fj = f.fjord || {};
  const st = statusOf(f);
  return [
    null, // the link, set once
    f.namespace,
    fj.runtime || '',
    shortImage(f),
    `${f.availableReplicas} / ${f.replicas}`,
    fmtNum(f.invocationCount, 0),
    sum && sum.rps.length ? fmtNum(sum.rps[sum.rps.length - 1], 2) : '–',
    pct(sum && sum.errorRate),
    sum ? `${fmtNum(sum.p50Ms, 1)} / ${fmtNum(sum.p99Ms, 1)}` : '–',
    fmtNum(fj.coldStarts || 0, 0),
    st,
  ];
}

export function listView(main) {
  const nsSelect = h('select', { id: 'ns', 'aria-label': 'Namespace' });
  const filter = h('input', { id: 'filter', type: 'search', placeholder: 'Filter by name, image or label', 'aria-label': 'Filter' });
  const count = h('span', { class: 'muted', id: 'count' });
  const err = h('div');
  const tbody = h('tbody');
  const table = h('table', { class: 'list', id: 'functions' },
    h('thead', {}, h('tr', {}, COLUMNS.map((c) => h('th', { scope: 'col' }, c)))),
    tbody);
  main.append(h('h1', {}, 'Functions'),
    h('div', { class: 'toolbar' }, nsSelect, filter, count), err,
    h('div', { class: 'scroll' }, table));

  const rows = new Map(); // name -> { tr, tds, search, values }
  let timer;
  let stopped = false;
  let marked = false;

  function applyFilter() {
    const q = filter.value.trim().toLowerCase();
    let shown = 0;
    for (const r of rows.values()) {
      const hide = q !== '' && !r.search.includes(q);
      if (r.tr.hidden !== hide) r.tr.hidden = hide;
      if (!hide) shown++;
    }
    count.textContent = `${shown} of ${rows.size}`;
  }

  function update(list, sums) {
    const seen = new Set();
    const frag = document.createDocumentFragment();
    list.forEach((f) => {
      seen.add(f.name);
      let r = rows.get(f.name);
      if (!r) {
        r = newRow(f);
        rows.set(f.name, r);
      }
      const sum = sums.get(f.name);
      const cells = cellsOf(f, sum);
      for (let i = 1; i < cells.length; i++) {
        const v = cells[i];
        const text = typeof v === 'object' ? v.text : v;
        if (r.values[i] !== text) {
          r.values[i] = text;
          if (i === SPARK) r.rate.textContent = text; else r.tds[i].textContent = text;
          if (typeof v === 'object') r.tds[i].className = `status ${v.cls}`;
        }
      }
      const key = sum ? sum.rps.join(',') : '';
      if (key !== r.sparkKey) { r.sparkKey = key; drawSpark(r, sum && sum.rps); }
      r.search = [f.name, f.image, ...Object.entries(f.labels || {}).flat()].join(' ').toLowerCase();
      frag.append(r.tr); // keeps the server's order (by name)
    });
    for (const [name, r] of rows) if (!seen.has(name)) { r.tr.remove(); rows.delete(name); }
    tbody.append(frag);
    applyFilter();
    // The first full table, for the benchmark's time to content (fjord-bench --only ui).
    if (!marked && list.length) { marked = true; performance.mark('fjord:list-rendered'); }
  }

  async function refresh() {
    try {
      const ns = encodeURIComponent(nsSelect.value || 'openfaas-fn');
      const [list, summaries] = await Promise.all([
        api('GET', `/system/functions?namespace=${ns}`),
        api('GET', `/system/functions/history?namespace=${ns}`).catch(() => []),
      ]);
      if (stopped) return;
      message(err, '');
      update(list, new Map(summaries.map((x) => [x.name, x])));
      if (!list.length) message(err, 'No functions in this namespace yet: deploy one.', 'muted');
    } catch (x) {
      if (!stopped) message(err, `Could not load the functions: ${x.message}`);
    }
    if (!stopped) timer = setTimeout(refresh, REFRESH_MS);
  }

  // The first load does not wait for the namespaces: it uses the one chosen last.
  const wanted = sessionStorage.getItem('fjord.ns') || 'openfaas-fn';
  nsSelect.append(h('option', { value: wanted, selected: true }, wanted));
  refresh();
  (async () => {
    try {
      const namespaces = await api('GET', '/system/namespaces');
      if (stopped) return;
      clear(nsSelect);
      for (const ns of namespaces) nsSelect.append(h('option', { value: ns, selected: ns === wanted }, ns));
      if (!namespaces.includes(wanted)) nsSelect.append(h('option', { value: wanted, selected: true }, wanted));
    } catch (x) { /* the chosen one stays */ }
  })();
  nsSelect.addEventListener('change', () => {
    sessionStorage.setItem('fjord.ns', nsSelect.value);
    clearTimeout(timer);
    for (const r of rows.values()) r.tr.remove();
    rows.clear();
    refresh();
  });
  for (const ev of ['input', 'change', 'search']) filter.addEventListener(ev, applyFilter);
  return () => { stopped = true; clearTimeout(timer); };
}
