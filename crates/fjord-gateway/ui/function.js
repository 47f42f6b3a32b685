// A function's page: status and actions, live graphs from its in-memory history, the spec,
// an invoke console and its logs tailing live.
import { api, can, request, fnPath } from './api.js';
import { h, clear, kvTable, field, fmtNum, message } from './dom.js';
import { statusOf } from './list.js';

const REFRESH_MS = 5000;
const MAX_LOG_LINES = 500;
const MAX_SHOWN_BODY = 64 * 1024;

// A change button: disabled when the session's scope cannot do it (the API refuses anyway).
function changeButton(text, needs, attrs = {}) {
  const ok = can(needs);
  return h('button', { type: 'button', ...attrs, disabled: !ok, title: ok ? undefined : `needs scope ${needs}`, dataset: { needs } }, text);
}

// Axis numbers: small values (a few thousandths of a core) keep two significant digits.
function tick(v) {
  return v !== 0 && Math.abs(v) < 1 ? String(Number(v.toPrecision(2))) : fmtNum(v, 1);
}

function chart(el, title, series, yLabel) {
  if (!window.uPlot) return null;
  const colors = ['#1b7f3b', '#2b6cb0', '#b7791f', '#c53030', '#6b46c1'];
  const opts = {
    title, width: Math.max(280, el.clientWidth || 320), height: 180,
    // Always the last 15 minutes, however few samples there are yet.
    scales: {
      x: { time: true, range: () => { const now = Date.now() / 1000; return [now - 900, now]; } },
      // From zero: a flat line near a small value is not blown up into noise.
      y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] },
    },
    axes: [{}, { label: yLabel, size: 64, values: (u, splits) => splits.map(tick) }],
    series: [{}, ...series.map((label, i) => ({ label, stroke: colors[i % colors.length], width: 1.5, spanGaps: false, points: { show: true, size: 4 } }))],
  };
  return new window.uPlot(opts, [[], ...series.map(() => [])], el);
}

function redeployBody(f) {
  const labels = { ...(f.labels || {}) };
  delete labels.faas_function;
  return {
    service: f.name, namespace: f.namespace, image: f.image, envProcess: f.envProcess,
    envVars: f.envVars, constraints: f.constraints, secrets: f.secrets, labels,
    annotations: f.annotations, limits: f.limits, requests: f.requests,
    readOnlyRootFilesystem: f.readOnlyRootFilesystem,
  };
}

export function functionView(main, ns, name) {
  let stopped = false;
  let timer;
  const logAbort = new AbortController();

  const title = h('h1', {}, name, h('span', { class: 'muted ns' }, ` .${ns}`));
  const status = h('p', { class: 'status-line', id: 'fn-status', role: 'status' });
  const actionsMsg = h('div', { id: 'actions-msg' });

  // Actions.
  const replicas = h('input', { type: 'number', min: 0, value: 1, id: 'replicas', class: 'narrow' });
  replicas.disabled = !can('deploy');
  const scaleBtn = changeButton('Scale', 'deploy', { id: 'scale' });
  const zeroBtn = changeButton('Scale to zero', 'deploy', { id: 'scale-zero' });
  const redeployBtn = changeButton('Redeploy', 'deploy', { id: 'redeploy' });
  const deleteBtn = changeButton('Delete…', 'deploy', { id: 'delete', class: 'danger' });
  const confirmBox = h('div', { class: 'confirm', id: 'confirm-delete', hidden: true },
    h('p', {}, `Delete ${name}? Its replicas stop and its spec is removed.`),
    h('button', { type: 'button', class: 'danger', id: 'confirm-delete-yes' }, `Delete ${name}`),
    h('button', { type: 'button', id: 'confirm-delete-no' }, 'Cancel'));
  let current = null;

  async function scale(n) {
    try {
      await api('POST', `/system/scale-function/${encodeURIComponent(name)}?namespace=${encodeURIComponent(ns)}`,
        { serviceName: name, namespace: ns, replicas: n });
      message(actionsMsg, `Scaling to ${n}.`, 'ok');
      refresh();
    } catch (x) { message(actionsMsg, `Scale failed: ${x.message}`); }
  }
  scaleBtn.addEventListener('click', () => scale(Number(replicas.value)));
  zeroBtn.addEventListener('click', () => scale(0));
  redeployBtn.addEventListener('click', async () => {
    if (!current) return;
    try {
      await api('PUT', '/system/functions', redeployBody(current));
      message(actionsMsg, 'Redeploying the current version.', 'ok');
    } catch (x) { message(actionsMsg, `Redeploy failed: ${x.message}`); }
  });
  deleteBtn.addEventListener('click', () => { confirmBox.hidden = false; confirmBox.querySelector('#confirm-delete-no').focus(); });
  confirmBox.querySelector('#confirm-delete-no').addEventListener('click', () => { confirmBox.hidden = true; deleteBtn.focus(); });
  confirmBox.querySelector('#confirm-delete-yes').addEventListener('click', async () => {
    try {
      await api('DELETE', '/system/functions', { functionName: name, namespace: ns });
      location.hash = '#/';
    } catch (x) { message(actionsMsg, `Delete failed: ${x.message}`); }
  });

  // Graphs.
  const graphs = h('div', { class: 'graphs' });
  const boxes = ['requests', 'latency', 'replicas', 'inflight', 'cpu', 'memory'].map((g) => h('div', { class: 'graph', id: `graph-${g}`, role: 'figure', 'aria-label': `${g} graph, last 15 minutes` }));
  graphs.append(...boxes);

  // Spec.
  const spec = h('div', { id: 'spec', class: 'spec' });

  // Invoke console.
  const method = h('select', { id: 'inv-method' }, ['GET', 'POST', 'PUT', 'PATCH', 'DELETE'].map((m) => h('option', { value: m, selected: m === 'POST' }, m)));
  const path = h('input', { id: 'inv-path', value: '/', spellcheck: false });
  const query = h('input', { id: 'inv-query', placeholder: 'a=1&b=2', spellcheck: false });
  const headers = h('textarea', { id: 'inv-headers', rows: 2, placeholder: 'Content-Type: text/plain', spellcheck: false });
  const body = h('textarea', { id: 'inv-body', rows: 4, spellcheck: false });
  // For functions with `com.fjord.auth: token`: sent as Authorization, kept in this page only.
  const token = h('input', { id: 'inv-token', type: 'password', autocomplete: 'off', spellcheck: false, placeholder: 'fjord_…' });
  const tokenField = field('Invoke token (com.fjord.auth: token)', token,
    'Sent as Authorization: Bearer; never stored, gone when you leave the page.');
  tokenField.hidden = true;
  const send = h('button', { type: 'submit', id: 'inv-send' }, 'Invoke');
  const out = h('div', { id: 'inv-out', class: 'inv-out', 'aria-live': 'polite' });
  const form = h('form', { class: 'console', id: 'invoke' },
    h('div', { class: 'row' }, field('Method', method), field('Path', path), field('Query', query)),
    tokenField, field('Headers (one per line)', headers), field('Body', body), send, out);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const hs = new Headers();
    for (const line of headers.value.split('\n')) {
      const i = line.indexOf(':');
      if (i > 0) {
        try { hs.append(line.slice(0, i).trim(), line.slice(i + 1).trim()); } catch (x) { message(out, `Header: ${x.message}`); return; }
      }
    }
    let p = path.value.trim() || '/';
    if (!p.startsWith('/')) p = '/' + p;
    const q = query.value.trim().replace(/^\?/, '');
    const url = `/function/${encodeURIComponent(name)}.${encodeURIComponent(ns)}${p === '/' ? '' : p}${q ? '?' + q : ''}`;
    const m = method.value;
    if (token.value.trim()) hs.set('Authorization', `Bearer ${token.value.trim()}`);
    send.disabled = true;
    const t0 = performance.now();
    try {
      const r = await fetch(url, { method: m, headers: hs, body: ['GET', 'HEAD'].includes(m) ? undefined : body.value, credentials: 'omit' });
      const text = await r.text();
      const ms = performance.now() - t0;
      const headerLines = [...r.headers.entries()].map(([k, v]) => `${k}: ${v}`).join('\n');
      clear(out).append(
        h('p', {}, h('strong', { id: 'inv-status' }, `${r.status} ${r.statusText}`),
          ` · ${fmtNum(ms, 1)} ms · call id `, h('code', { id: 'inv-callid' }, r.headers.get('x-call-id') || '–')),
        h('details', {}, h('summary', {}, 'Response headers'), h('pre', {}, headerLines)),
        h('pre', { id: 'inv-body-out', class: 'body' }, text.length > MAX_SHOWN_BODY ? text.slice(0, MAX_SHOWN_BODY) + '\n… (cut)' : text));
    } catch (x) {
      message(out, `The request failed: ${x.message}`);
    } finally { send.disabled = false; }
  });

  // Logs.
  const logs = h('div', { id: 'logs', class: 'logs', role: 'log', 'aria-live': 'off', 'aria-label': 'Logs', tabindex: 0 });
  const logState = h('p', { class: 'muted', id: 'log-state' }, 'Connecting…');

  main.append(
    h('p', {}, h('a', { href: '#/' }, '← Functions')),
    title, status,
    h('div', { class: 'actions' }, field('Replicas', replicas), scaleBtn, zeroBtn, redeployBtn, deleteBtn),
    confirmBox, actionsMsg,
    h('h2', {}, 'Last 15 minutes'), graphs,
    h('h2', {}, 'Invoke'), form,
    h('h2', {}, 'Logs'), logState, logs,
    h('h2', {}, 'Spec'), spec);

  const charts = [
    chart(boxes[0], 'Requests/s by status', ['2xx', '3xx', '4xx', '5xx'], 'req/s'),
    chart(boxes[1], 'Latency', ['p50', 'p99'], 'ms'),
    chart(boxes[2], 'Replicas', ['ready', 'desired'], ''),
    chart(boxes[3], 'In flight', ['requests'], ''),
    chart(boxes[4], 'CPU', ['cores'], 'cores'),
    chart(boxes[5], 'Memory', ['MiB'], 'MiB'),
  ];

  function renderSpec(f) {
    const fj = f.fjord || {};
    const limits = { ...(f.limits || {}) };
    if (fj.memoryLimit) limits['memory (enforced)'] = fj.memoryLimit;
    const facts = {
      image: f.image, runtime: fj.runtime, mode: fj.mode, digest: fj.digest,
      'created at': f.createdAt, 'updated at': fj.updatedAt, restarts: fj.restarts,
      'OOM kills': fj.oomKills, 'last scale reason': fj.lastScaleReason, 'last error': fj.lastError,
    };
    Object.keys(facts).forEach((k) => facts[k] === undefined && delete facts[k]);
    const triggers = (fj.triggers || []).map((t) => h('li', {}, `${t.kind}: ${t.source} — last ${t.lastRun || 'never'}, next ${t.nextRun || '–'}, ${t.lastStatus || ''}`));
    clear(spec).append(
      kvTable(facts, 'Function'),
      kvTable(f.envVars, 'Environment'),
      kvTable(f.labels, 'Labels'),
      kvTable(f.annotations, 'Annotations'),
      kvTable(limits, 'Limits'),
      h('h3', {}, 'Secrets'), (f.secrets || []).length ? h('ul', {}, f.secrets.map((s) => h('li', {}, s))) : h('p', { class: 'muted' }, 'None.'),
      h('h3', {}, 'Triggers'), triggers.length ? h('ul', {}, triggers) : h('p', { class: 'muted' }, 'HTTP only.'));
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      const [f, hist] = await Promise.all([
        api('GET', fnPath(ns, name)),
        api('GET', `/system/function/${encodeURIComponent(name)}/history?namespace=${encodeURIComponent(ns)}`),
      ]);
      if (stopped) return;
      const first = current === null;
      current = f;
      const st = statusOf(f);
      status.className = `status-line status ${st.cls}`;
      status.textContent = `${st.text} · ${f.availableReplicas} of ${f.replicas} replicas ready · ${fmtNum(f.invocationCount, 0)} invocations`;
      if (first) replicas.value = Math.max(1, f.replicas);
      const wantsToken = ((f.annotations || {})['com.fjord.auth'] || '') === 'token';
      tokenField.hidden = !wantsToken && !token.value;
      renderSpec(f);
      const s = hist.samples;
      const t = s.map((p) => p.t / 1000);
      const data = [
        [t, s.map((p) => p.rps2xx), s.map((p) => p.rps3xx), s.map((p) => p.rps4xx), s.map((p) => p.rps5xx)],
        [t, s.map((p) => p.p50Ms), s.map((p) => p.p99Ms)],
        [t, s.map((p) => p.ready), s.map((p) => p.desired)],
        [t, s.map((p) => p.inflight)],
        [t, s.map((p) => p.cpuCores)],
        [t, s.map((p) => (p.memoryBytes === undefined || p.memoryBytes === null ? null : p.memoryBytes / 1048576))],
      ];
      charts.forEach((c, i) => c && c.setData(data[i]));
      graphs.dataset.samples = String(s.length);
      graphs.dataset.memory = String(s.reduce((n, p) => Math.max(n, p.memoryBytes || 0), 0));
      graphs.dataset.requests = String(s.reduce((n, p) => n + p.rps2xx + p.rps3xx + p.rps4xx + p.rps5xx, 0));
    } catch (x) {
      if (stopped) return;
      if (x.status === 404) { message(status, 'This function is not deployed (any more).'); return; }
      message(actionsMsg, `Could not load the function: ${x.message}`);
    }
    if (!stopped) timer = setTimeout(refresh, REFRESH_MS);
  }

  async function tail() {
    try {
      const r = await request('GET', `/system/logs?name=${encodeURIComponent(name)}&namespace=${encodeURIComponent(ns)}&tail=100&follow=true`, { signal: logAbort.signal });
      if (!r.ok) { logState.textContent = `Logs unavailable: ${(await r.text()).trim()}`; return; }
      logState.textContent = 'Following live.';
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        const frag = document.createDocumentFragment();
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          if (!line.trim()) continue;
          let m;
          try { m = JSON.parse(line); } catch { continue; }
          frag.append(h('div', { class: 'logline' }, h('span', { class: 'muted' }, `${m.timestamp.slice(11, 23)} ${m.instance} `), m.text));
        }
        const atBottom = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
        logs.append(frag);
        while (logs.childNodes.length > MAX_LOG_LINES) logs.firstChild.remove();
        if (atBottom) logs.scrollTop = logs.scrollHeight;
      }
      if (!stopped) logState.textContent = 'The log stream ended.';
    } catch (x) {
      if (!stopped) logState.textContent = `Logs stopped: ${x.message}`;
    }
  }

  refresh();
  tail();
  return () => { stopped = true; clearTimeout(timer); logAbort.abort(); charts.forEach((c) => c && c.destroy()); };
}
