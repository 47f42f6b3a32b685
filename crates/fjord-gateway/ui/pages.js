// Deploy form, secrets, API tokens, async calls and the system page.
import { api, can, session, request } from './api.js';
import { h, clear, field, message, kvTable } from './dom.js';
import { digestOf } from './sha256.js';

function needs(scope, main) {
  if (can(scope)) return true;
  main.append(h('p', { class: 'muted' }, `This page needs scope ${scope}; you are signed in with scope ${session.scope}.`));
  return false;
}

function parseLines(text) {
  const out = {};
  for (const line of text.split('\n')) {
    const i = line.indexOf('=');
    if (i > 0) out[line.slice(0, i).trim()] = line.slice(i + 1);
  }
  return out;
}

// Puts an API validation message next to the field it names (the API validates; the page
// only places its message). First match wins.
const FIELD_WORDS = [
  [/annotation/i, 'd-annotations'],
  [/function name|service/i, 'd-name'],
  [/namespace/i, 'd-ns'],
  [/envProcess|fprocess|program|command/i, 'd-process'],
  [/bundle upload|archive|manifest/i, 'd-bundle'],
  [/image|bundle|reference/i, 'd-image'],
  [/envVars|environment/i, 'd-env'],
  [/label/i, 'd-labels'],
  [/memory|limits/i, 'd-memory'],
];

function showFieldError(form, text) {
  for (const el of form.querySelectorAll('.field-error')) el.textContent = '';
  for (const [re, id] of FIELD_WORDS) {
    if (re.test(text)) {
      const err = form.querySelector(`#${id}-err`);
      if (err) { err.textContent = text; form.querySelector(`#${id}`).focus(); return true; }
    }
  }
  return false;
}

export function deployView(main) {
  main.append(h('h1', {}, 'Deploy a function'));
  if (!needs('deploy', main)) return;
  const name = h('input', { id: 'd-name', required: true, spellcheck: false });
  const ns = h('input', { id: 'd-ns', value: 'openfaas-fn', spellcheck: false });
  const image = h('input', { id: 'd-image', spellcheck: false });
  const bundle = h('input', { id: 'd-bundle', type: 'file', accept: '.tar.gz,.tgz,application/gzip' });
  const proc = h('input', { id: 'd-process', spellcheck: false });
  const env = h('textarea', { id: 'd-env', rows: 3, spellcheck: false });
  const labels = h('textarea', { id: 'd-labels', rows: 2, spellcheck: false });
  const annotations = h('textarea', { id: 'd-annotations', rows: 2, spellcheck: false });
  const memory = h('input', { id: 'd-memory', placeholder: '128Mi', spellcheck: false });
  const msg = h('div');
  const form = h('form', { id: 'deploy', class: 'form' },
    field('Name', name), field('Namespace', ns),
    field('Image or bundle reference', image, 'A container image (registry/repo:tag) or a bundle uploaded with `fjord up`.'),
    field('…or upload a bundle', bundle, 'A bundle.tar.gz from `fjord build`: uploaded, tagged NAME:latest and deployed.'),
    field('Command (envProcess)', proc, 'Runs the image as sandboxed processes; empty: the image entry point in a container.'),
    field('Environment (NAME=value per line)', env), field('Labels (key=value per line)', labels),
    field('Annotations (key=value per line)', annotations, 'e.g. com.fjord.auth=token'),
    field('Memory limit', memory),
    h('button', { type: 'submit' }, 'Deploy'), msg);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    message(msg, '');
    for (const el of form.querySelectorAll('.field-error')) el.textContent = '';
    const body = { service: name.value.trim(), namespace: ns.value.trim() || undefined, image: image.value.trim() };
    const file = bundle.files && bundle.files[0];
    if (!file && !body.image) {
      form.querySelector('#d-image-err').textContent = 'Give an image or bundle reference, or choose a bundle to upload.';
      image.focus();
      return;
    }
    if (proc.value.trim()) body.envProcess = proc.value.trim();
    if (env.value.trim()) body.envVars = parseLines(env.value);
    if (labels.value.trim()) body.labels = parseLines(labels.value);
    if (annotations.value.trim()) body.annotations = parseLines(annotations.value);
    if (memory.value.trim()) body.limits = { memory: memory.value.trim() };
    try {
      if (file) {
        // The bundle API addresses bundles by the sha256 of their bytes.
        message(msg, `Uploading ${file.name}…`, 'muted');
        const digest = `sha256:${await digestOf(file)}`;
        const tag = `${body.service || 'bundle'}:latest`;
        const r = await request('PUT', `/system/bundles/${digest}?tag=${encodeURIComponent(tag)}`,
          { body: file, headers: { 'Content-Type': 'application/gzip' } });
        if (!r.ok) {
          const text = (await r.text()).trim();
          form.querySelector('#d-bundle-err').textContent = `Bundle upload: ${text}`;
          bundle.focus();
          message(msg, '');
          return;
        }
        body.image = tag;
        image.value = tag;
        message(msg, '');
      }
      await api('POST', '/system/functions', body);
      location.hash = `#/fn/${encodeURIComponent(body.namespace || 'openfaas-fn')}/${encodeURIComponent(body.service)}`;
    } catch (x) {
      if (!showFieldError(form, x.message)) message(msg, x.message);
    }
  });
  main.append(form);
}

export function secretsView(main) {
  main.append(h('h1', {}, 'Secrets'));
  if (!needs('deploy', main)) return;
  const list = h('div', { id: 'secrets' });
  const msg = h('div');
  const nsSelect = h('select', { id: 's-ns' });
  let ns = sessionStorage.getItem('fjord.ns') || 'openfaas-fn';
  (async () => {
    let namespaces = ['openfaas-fn'];
    try { namespaces = await api('GET', '/system/namespaces'); } catch { /* the default only */ }
    if (!namespaces.includes(ns)) ns = namespaces[0] || 'openfaas-fn';
    for (const n of namespaces) nsSelect.append(h('option', { value: n, selected: n === ns }, n));
  })();
  nsSelect.addEventListener('change', () => { ns = nsSelect.value; sessionStorage.setItem('fjord.ns', ns); load(); });
  async function load() {
    try {
      const q = encodeURIComponent(ns);
      const [secrets, fns] = await Promise.all([
        api('GET', `/system/secrets?namespace=${q}`),
        api('GET', `/system/functions?namespace=${q}`),
      ]);
      message(msg, '');
      const users = (s) => fns.filter((f) => (f.secrets || []).includes(s.name)).map((f) => f.name).join(', ') || '–';
      clear(list).append(h('table', { class: 'list' },
        h('caption', { class: 'muted' }, `Secrets in ${ns}`),
        h('thead', {}, h('tr', {}, ['Name', 'Used by', 'Actions'].map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', {}, secrets.map((s) => {
          const del = h('button', { type: 'button', class: 'danger', disabled: !can('admin'), dataset: { needs: 'admin' }, 'aria-label': `Delete secret ${s.name}` }, 'Delete');
          del.addEventListener('click', async () => {
            try { await api('DELETE', '/system/secrets', { name: s.name, namespace: ns }); load(); } catch (x) { message(msg, x.message); }
          });
          return h('tr', {}, h('td', {}, s.name), h('td', {}, users(s)), h('td', {}, del));
        }))));
    } catch (x) { message(msg, x.message); }
  }
  const name = h('input', { id: 's-name', spellcheck: false });
  const value = h('textarea', { id: 's-value', rows: 2, autocomplete: 'off', spellcheck: false });
  const form = h('form', { id: 'secret-form', class: 'form' }, h('h2', {}, 'Create or update'),
    field('Name', name), field('Value (never shown again)', value),
    h('button', { type: 'submit', disabled: !can('admin'), dataset: { needs: 'admin' } }, 'Save'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const body = { name: name.value.trim(), value: value.value, namespace: ns };
    try {
      try { await api('POST', '/system/secrets', body); } catch (x) {
        if (x.status !== 409) throw x;
        await api('PUT', '/system/secrets', body);
      }
      value.value = '';
      message(msg, `Saved ${body.name}.`, 'ok');
      load();
    } catch (x) { message(msg, x.message); }
  });
  main.append(h('div', { class: 'toolbar' }, field('Namespace', nsSelect)), list, msg, form);
  load();
}

export function tokensView(main) {
  main.append(h('h1', {}, 'API tokens'));
  if (!needs('admin', main)) return;
  const list = h('div', { id: 'tokens' });
  const msg = h('div');
  async function load() {
    try {
      const tokens = await api('GET', '/system/tokens');
      clear(list).append(h('table', { class: 'list' },
        h('thead', {}, h('tr', {}, ['Id', 'Name', 'Scope', 'Expires', ''].map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', {}, tokens.map((t) => {
          const rev = h('button', { type: 'button', class: 'danger' }, 'Revoke');
          rev.addEventListener('click', async () => {
            try { await api('DELETE', `/system/tokens/${encodeURIComponent(t.id)}`); load(); } catch (x) { message(msg, x.message); }
          });
          return h('tr', {}, h('td', {}, t.id), h('td', {}, t.name || ''), h('td', {}, t.scope), h('td', {}, t.expiresAt || 'never'), h('td', {}, rev));
        }))));
    } catch (x) { message(msg, x.message); }
  }
  const name = h('input', { id: 't-name', spellcheck: false });
  const scope = h('select', { id: 't-scope' }, ['read', 'invoke', 'deploy', 'admin'].map((s) => h('option', { value: s }, s)));
  const expires = h('input', { id: 't-expires', placeholder: '30d (empty: never)', spellcheck: false });
  const shown = h('div', { id: 'token-once', 'aria-live': 'polite' });
  const form = h('form', { id: 'token-form', class: 'form' }, h('h2', {}, 'Create'),
    field('Name', name), field('Scope', scope), field('Expires in', expires),
    h('button', { type: 'submit' }, 'Create token'), shown);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const body = { name: name.value.trim(), scope: scope.value };
      if (expires.value.trim()) body.expiresIn = expires.value.trim();
      const t = await api('POST', '/system/tokens', body);
      // Shown once, in the page only (never in a URL); gone when the page changes.
      clear(shown).append(h('p', { class: 'ok' }, 'Copy it now, it is not shown again:'), h('pre', { class: 'body' }, t.token));
      load();
    } catch (x) { message(msg, x.message); }
  });
  main.append(list, msg, form);
  load();
}

export function asyncView(main) {
  main.append(h('h1', {}, 'Async calls'));
  const state = h('select', { id: 'call-state', 'aria-label': 'State' },
    ['', 'queued', 'running', 'retrying', 'done', 'dead', 'cancelled'].map((v) => h('option', { value: v }, v || 'any state')));
  const fn = h('input', { id: 'call-fn', type: 'search', placeholder: 'Function', 'aria-label': 'Function', spellcheck: false });
  const list = h('div', { id: 'calls', class: 'scroll' });
  const msg = h('div');
  let all = [];
  const when = (ms) => (ms ? new Date(ms).toISOString().replace('T', ' ').slice(0, 19) : '–');
  function render() {
    const q = fn.value.trim();
    const calls = all.filter((c) => !q || c.function.includes(q));
    clear(list).append(calls.length ? h('table', { class: 'list' },
      h('thead', {}, h('tr', {}, ['Id', 'Function', 'State', 'Attempts', 'Last status', 'Callback', 'Created', ''].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, calls.map((c) => {
        const replay = h('button', { type: 'button', disabled: !can('deploy') || c.state !== 'dead', dataset: { needs: 'deploy' } }, 'Replay');
        replay.addEventListener('click', async () => {
          try { await api('POST', `/system/async-calls/${encodeURIComponent(c.id)}/replay`); load(); } catch (x) { message(msg, x.message); }
        });
        const cancel = h('button', { type: 'button', disabled: !can('deploy') || !['queued', 'retrying'].includes(c.state), dataset: { needs: 'deploy' } }, 'Cancel');
        cancel.addEventListener('click', async () => {
          try { await api('DELETE', `/async-function/${encodeURIComponent(c.id)}`); load(); } catch (x) { message(msg, x.message); }
        });
        return h('tr', { dataset: { call: c.id } }, h('td', {}, c.id), h('td', {}, c.function), h('td', { class: `state ${c.state}` }, c.state),
          h('td', {}, String(c.attempts)), h('td', { title: c.lastError || undefined }, c.status ? String(c.status) : (c.lastError || '–')),
          h('td', {}, c.callback || (c.callbackUrl ? 'pending' : '–')), h('td', {}, when(c.createdAtMs)), h('td', {}, replay, ' ', cancel));
      }))) : h('p', { class: 'muted' }, 'No async calls (finished ones are kept a day).'));
  }
  async function load() {
    try {
      all = await api('GET', `/system/async-calls?limit=500${state.value ? `&state=${state.value}` : ''}`);
      message(msg, '');
      render();
    } catch (x) { message(msg, x.message); }
  }
  state.addEventListener('change', load);
  fn.addEventListener('input', render);
  main.append(h('div', { class: 'toolbar' }, state, fn), msg, list);
  load();
  const timer = setInterval(load, 5000);
  return () => clearInterval(timer);
}

function bytes(n) {
  if (n === undefined || n === null) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}

function duration(s) {
  const d = Math.floor(s / 86400); const hh = Math.floor((s % 86400) / 3600); const m = Math.floor((s % 3600) / 60);
  return `${d ? d + ' d ' : ''}${hh} h ${m} min`;
}

export function systemView(main) {
  main.append(h('h1', {}, 'System'));
  const box = h('div', { id: 'system' });
  main.append(box);
  async function load() {
    try {
      const st = await api('GET', '/system/status');
      clear(box).append(kvTable({
        version: `${st.version} (${st.commit})`,
        architecture: st.arch,
        runtimes: st.containers === 'off' ? 'processes' : `processes, containers (--containers ${st.containers})`,
        queue: `${st.queue}${st.queueUrl ? ` (${st.queueUrl})` : ''}: ${st.queueHealthy ? 'healthy' : `failing: ${st.queueError}`}`,
        'async calls waiting': st.queued,
        uptime: duration(st.uptimeSeconds),
        authentication: st.auth ? 'on' : 'OFF (--auth=false)',
        TLS: st.tls ? 'on' : 'off',
        'data dir disk': st.diskTotalBytes ? `${bytes(st.diskFreeBytes)} free of ${bytes(st.diskTotalBytes)}` : '–',
        'data dir': `${st.dataDir}: ${bytes(st.dataDirBytes)} used`,
      }, 'Server'),
      kvTable(Object.fromEntries((st.connectors || []).map((c) => [c.name, c.state])), 'Connectors'),
      kvTable(Object.fromEntries((st.dataDirParts || []).map((p) => [p.name, bytes(p.bytes)])), 'Data dir usage'));
    } catch (x) { message(box, x.message); }
  }
  load();
  const timer = setInterval(load, 10000);
  return () => clearInterval(timer);
}
