// Collections: list with counts, create, delete (after an inline confirmation).

import { api } from './api.js';
import { clear, h } from './dom.js';

/** A "Delete" button that asks again in place before calling `action`. */
export function confirmButton(label, question, action) {
  const wrap = h('span', { class: 'confirm' });
  const ask = () => {
    clear(wrap).append(
      h('span', { class: 'confirm-q' }, question),
      h('button', { type: 'button', class: 'danger', onclick: run }, 'Yes, delete'),
      h('button', { type: 'button', onclick: reset }, 'Cancel'),
    );
    wrap.querySelectorAll('button')[1].focus(); // Cancel: Enter by habit does no harm
  };
  const reset = () => {
    clear(wrap).append(h('button', { type: 'button', class: 'danger-quiet', onclick: ask }, ...label));
  };
  const run = async () => {
    for (const b of wrap.querySelectorAll('button')) b.disabled = true;
    try {
      await action();
    } catch {
      reset();
    }
  };
  reset();
  return wrap;
}

export function renderCollections(root, ctx) {
  const error = h('p', { class: 'field-error', role: 'alert', id: 'new-collection-error' });
  const input = h('input', {
    id: 'new-collection',
    name: 'name',
    required: true,
    maxlength: 64,
    pattern: '[A-Za-z0-9_\\-][A-Za-z0-9_.\\-]*',
    autocomplete: 'off',
    'aria-describedby': 'new-collection-hint new-collection-error',
  });
  const form = h(
    'form',
    { class: 'panel create', onsubmit: create },
    h('label', { for: 'new-collection' }, 'New collection'),
    h('div', { class: 'row' }, input, h('button', { type: 'submit', class: 'primary' }, 'Create')),
    h('p', { class: 'hint', id: 'new-collection-hint' }, "Letters, digits, '-', '_' and '.', up to 64 characters."),
    error,
  );
  const list = h('div', { class: 'collection-list', 'aria-live': 'polite' }, h('p', { class: 'muted' }, 'Loading…'));
  root.append(h('h2', { tabindex: -1 }, 'Collections'), form, list);

  async function create(e) {
    e.preventDefault();
    error.textContent = '';
    const name = input.value.trim();
    try {
      await api.createCollection(name);
      await ctx.refreshCollections();
      ctx.go('documents', name);
    } catch (err) {
      if (err.status === 409) error.textContent = `A collection named "${name}" already exists.`;
      else if (err.status === 400) error.textContent = err.message;
      else ctx.notify(err);
    }
  }

  function draw(collections) {
    clear(list);
    if (!collections.length) {
      list.append(h('p', { class: 'empty' }, 'No collections yet. Create one above, then upload documents to it.'));
      return;
    }
    const rows = collections.map((c) =>
      h(
        'tr',
        { 'data-collection': c.name },
        h('th', { scope: 'row', 'data-label': 'Name' }, h('a', { href: `#/c/${encodeURIComponent(c.name)}/documents` }, c.name)),
        h('td', { 'data-label': 'Documents', class: 'num' }, String(c.documents)),
        h('td', { 'data-label': 'Chunks', class: 'num' }, String(c.chunks)),
        h(
          'td',
          { class: 'actions' },
          h('a', { class: 'button', href: `#/c/${encodeURIComponent(c.name)}/ask` }, 'Ask'),
          h('a', { class: 'button', href: `#/c/${encodeURIComponent(c.name)}/search` }, 'Search'),
          confirmButton(['Delete', h('span', { class: 'sr-only' }, ` collection ${c.name}`)], `Delete "${c.name}" and its ${c.documents} documents?`, async () => {
            try {
              await api.deleteCollection(c.name);
              if (sessionStorage.getItem('kb.collection') === c.name) sessionStorage.removeItem('kb.collection');
              sessionStorage.removeItem(`kb.chat.${c.name}`);
            } catch (err) {
              ctx.notify(err);
            }
            draw(await ctx.refreshCollections());
          }),
        ),
      ),
    );
    list.append(
      h(
        'table',
        { class: 'table' },
        h('caption', { class: 'sr-only' }, 'Collections'),
        h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Name'), h('th', { scope: 'col', class: 'num' }, 'Documents'), h('th', { scope: 'col', class: 'num' }, 'Chunks'), h('th', { scope: 'col' }, h('span', { class: 'sr-only' }, 'Actions')))),
        h('tbody', {}, rows),
      ),
    );
  }

  let alive = true;
  api
    .collections()
    .then((cs) => alive && draw(cs))
    .catch((err) => {
      if (!alive) return;
      clear(list).append(h('p', { class: 'muted' }, 'Could not load the collections.'));
      ctx.notify(err);
    });
  return () => {
    alive = false;
  };
}
