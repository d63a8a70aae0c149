// The shell: routes (#/, #/c/NAME/documents|ask|search), the collection picker, the API key
// form and the notice line. Each view module renders into #view and returns a cleanup.

import { api, ApiError, getKey, setKey } from './api.js';
import { clear, h } from './dom.js';
import { renderCollections } from './collections.js';
import { renderDocuments } from './documents.js';
import { renderAsk } from './ask.js';
import { renderSearch } from './search.js';

const VIEWS = { collections: renderCollections, documents: renderDocuments, ask: renderAsk, search: renderSearch };
const CURRENT = 'kb.collection';

const $ = (id) => document.getElementById(id);
const view = $('view');
const picker = $('collection-picker');
const notice = $('notice');
let cleanup = null;
let collections = [];

function route() {
  const m = /^#\/c\/([^/]+)\/(documents|ask|search)$/.exec(location.hash);
  if (m) return { view: m[2], collection: decodeURIComponent(m[1]) };
  return { view: 'collections', collection: sessionStorage.getItem(CURRENT) || '' };
}

export function go(viewName, collection) {
  location.hash = viewName === 'collections' ? '#/' : `#/c/${encodeURIComponent(collection)}/${viewName}`;
}

/** Shows an error (ApiError or other) or a plain message on the notice line. */
export function notify(what) {
  if (what instanceof ApiError && what.status === 401) {
    showAuth(what.friendly);
    return;
  }
  clear(notice);
  if (!what) {
    notice.hidden = true;
    return;
  }
  const text = what instanceof ApiError ? what.friendly : what instanceof Error ? what.message : String(what);
  notice.append(h('span', {}, text), h('button', { type: 'button', class: 'quiet', onclick: () => notify(null) }, 'Dismiss'));
  notice.hidden = false;
}

function setCurrent(name) {
  if (name) sessionStorage.setItem(CURRENT, name);
  else sessionStorage.removeItem(CURRENT);
}

function drawChrome(r) {
  const current = r.collection;
  clear(picker);
  if (!collections.length) picker.append(h('option', { value: '' }, 'No collections'));
  else if (!collections.some((c) => c.name === current)) picker.append(h('option', { value: '' }, 'Choose…'));
  for (const c of collections) picker.append(h('option', { value: c.name }, c.name));
  picker.value = collections.some((c) => c.name === current) ? current : '';
  picker.disabled = !collections.length;
  for (const a of document.querySelectorAll('.tabs a')) {
    const v = a.dataset.view;
    const usable = v === 'collections' || !!current;
    a.href = v === 'collections' || !current ? '#/' : `#/c/${encodeURIComponent(current)}/${v}`;
    if (usable) a.removeAttribute('aria-disabled');
    else a.setAttribute('aria-disabled', 'true');
    if (v === r.view) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

/** Reloads the collection list (counts) and redraws the header. */
export async function refreshCollections() {
  try {
    collections = await api.collections();
  } catch (e) {
    notify(e);
  }
  drawChrome(route());
  return collections;
}

async function show(focus) {
  if (cleanup) cleanup();
  cleanup = null;
  notify(null);
  const r = route();
  if (r.view !== 'collections') setCurrent(r.collection);
  drawChrome(r);
  clear(view);
  const ctx = { collection: r.collection, go, notify, refreshCollections, collections: () => collections };
  cleanup = VIEWS[r.view](view, ctx) || null;
  if (focus) view.querySelector('h2')?.focus();
  await refreshCollections();
}

// ---- API key ----

function showAuth(reason) {
  $('auth-reason').textContent = reason || 'Enter an API key for this server. It is kept only for this browser session.';
  if (!$('auth').hidden) return; // already open: leave what is being typed alone
  $('auth').hidden = false;
  $('auth-key').value = getKey();
  $('auth-key').focus();
}

$('key-button').addEventListener('click', () => ($('auth').hidden ? showAuth() : ($('auth').hidden = true)));
$('auth-close').addEventListener('click', () => ($('auth').hidden = true));
$('auth-forget').addEventListener('click', () => {
  setKey('');
  $('auth-key').value = '';
  $('auth').hidden = true;
  show(false);
});
$('auth-form').addEventListener('submit', (e) => {
  e.preventDefault();
  setKey($('auth-key').value.trim());
  $('auth').hidden = true;
  show(false);
});
window.addEventListener('kb:unauthorized', (e) => showAuth(e.detail.friendly));

picker.addEventListener('change', () => {
  const name = picker.value;
  if (!name) return;
  setCurrent(name);
  const v = route().view;
  go(v === 'collections' ? 'documents' : v, name);
});

window.addEventListener('hashchange', () => show(true));

async function start() {
  // Waits while the server starts (503), and says so.
  for (let i = 0; ; i++) {
    try {
      await api.ready();
      break;
    } catch (e) {
      if (!(e instanceof ApiError) || (e.status !== 503 && e.status !== 0)) break;
      notify(e);
      await new Promise((res) => setTimeout(res, Math.min(5000, 500 * (i + 1))));
    }
  }
  notify(null);
  show(false);
}

start();
