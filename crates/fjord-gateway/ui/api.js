// The dashboard is a client of the same JSON API as the CLI. Signed in, the browser sends
// the session cookie; changes carry the session's CSRF token in X-Fjord-CSRF.

export const session = { scope: null, csrf: '', authDisabled: false, version: '' };

// Whether the session's scope covers `needed` (as fjord_control::tokens::Scope::covers).
const COVERS = {
  invoke: ['invoke', 'deploy', 'admin'],
  read: ['read', 'deploy', 'admin'],
  deploy: ['deploy', 'admin'],
  admin: ['admin'],
};
export function can(needed) {
  return (COVERS[needed] || []).includes(session.scope);
}

export class ApiError extends Error {
  constructor(status, text) {
    super(text || `HTTP ${status}`);
    this.status = status;
  }
}

let onSignedOut = () => {};
export function whenSignedOut(f) { onSignedOut = f; }

function headersFor(method, extra) {
  const headers = new Headers(extra || {});
  if (!['GET', 'HEAD'].includes(method) && session.csrf) headers.set('X-Fjord-CSRF', session.csrf);
  return headers;
}

export async function request(method, path, { json, body, headers, signal } = {}) {
  const hs = headersFor(method, headers);
  if (json !== undefined) {
    hs.set('Content-Type', 'application/json');
    body = JSON.stringify(json);
  }
  const r = await fetch(path, { method, headers: hs, body, credentials: 'same-origin', signal, redirect: 'manual' });
  if (r.status === 401 && path.startsWith('/system/')) {
    onSignedOut();
  }
  return r;
}

export async function api(method, path, json) {
  const r = await request(method, path, { json });
  const text = await r.text();
  if (!r.ok) throw new ApiError(r.status, text.trim());
  const ct = r.headers.get('content-type') || '';
  return ct.includes('json') && text ? JSON.parse(text) : text;
}

export async function loadSession() {
  const r = await fetch('/ui/session', { credentials: 'same-origin' });
  if (!r.ok) {
    Object.assign(session, { scope: null, csrf: '' });
    return false;
  }
  Object.assign(session, await r.json());
  return true;
}

export async function signIn(secret) {
  const json = secret.startsWith('fjord_') ? { token: secret } : { password: secret };
  const r = await fetch('/ui/session', {
    method: 'POST', credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(json),
  });
  const text = await r.text();
  if (!r.ok) throw new ApiError(r.status, text.trim());
  Object.assign(session, JSON.parse(text));
}

export async function signOut() {
  await request('DELETE', '/ui/session');
  Object.assign(session, { scope: null, csrf: '' });
}

export function fnPath(ns, name) {
  return `/system/function/${encodeURIComponent(name)}?namespace=${encodeURIComponent(ns)}`;
}
