// The dashboard's shell: session, sign-in, hash routing to the views.
import { session, loadSession, signIn, signOut, whenSignedOut } from './api.js';
import { h, clear, field, message } from './dom.js';
import { listView } from './list.js';
import { functionView } from './function.js';
import { deployView, secretsView, tokensView, systemView, asyncView } from './pages.js';

const main = document.getElementById('main');
let stopView = () => {};

function signInView() {
  document.getElementById('nav').hidden = true;
  document.getElementById('signout').hidden = true;
  document.getElementById('who').textContent = '';
  const secret = h('input', { type: 'password', name: 'secret', autocomplete: 'current-password', required: true });
  const err = h('div', { id: 'signin-error' });
  const form = h('form', { class: 'signin', id: 'signin' },
    h('h1', {}, 'Sign in to fjord'),
    field('Admin password or API token', secret,
      'The password is in <data-dir>/secrets/basic-auth-password; a token (fjord_…) signs in with its scope.'),
    h('button', { type: 'submit' }, 'Sign in'),
    err);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    message(err, '');
    try {
      await signIn(secret.value);
      secret.value = '';
      start();
    } catch (x) {
      message(err, x.status === 429 ? x.message : 'Wrong password or token.');
    }
  });
  clear(main).append(form);
  secret.focus();
}

function route() {
  stopView();
  stopView = () => {};
  const hash = location.hash.replace(/^#/, '') || '/';
  const parts = hash.split('/').filter(Boolean).map(decodeURIComponent);
  clear(main);
  let stop;
  switch (parts[0] || '') {
    case '': stop = listView(main); break;
    case 'fn': stop = functionView(main, parts[1], parts[2]); break;
    case 'deploy': stop = deployView(main); break;
    case 'secrets': stop = secretsView(main); break;
    case 'tokens': stop = tokensView(main); break;
    case 'system': stop = systemView(main); break;
    case 'async': stop = asyncView(main, parts[1], parts[2]); break;
    default: main.append(h('p', {}, 'No such page.'));
  }
  if (typeof stop === 'function') stopView = stop;
  for (const a of document.querySelectorAll('#nav a')) {
    const target = a.getAttribute('href').slice(1);
    a.toggleAttribute('aria-current', target === '/' ? hash === '/' || hash.startsWith('/fn/') : hash.startsWith(target));
  }
}

function start() {
  document.getElementById('banner').hidden = !session.authDisabled;
  document.getElementById('nav').hidden = false;
  document.getElementById('signout').hidden = session.authDisabled;
  document.getElementById('who').textContent = session.authDisabled ? '' : `scope: ${session.scope}`;
  document.body.dataset.scope = session.scope;
  route();
}

whenSignedOut(() => { stopView(); stopView = () => {}; signInView(); });
window.addEventListener('hashchange', () => { if (session.scope) route(); });
document.getElementById('signout').addEventListener('click', async () => {
  await signOut();
  stopView();
  signInView();
});

(async () => {
  if (await loadSession()) start(); else signInView();
})();
