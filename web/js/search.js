// Search: the raw retrieval results (hybrid, keyword or vector) with their scores.

import { api } from './api.js';
import { clear, h, marked, sourceLabel, termRanges, tidy } from './dom.js';

const last = new Map(); // collection → {query, mode, topK, hits}: kept while the page is open

export function renderSearch(root, ctx) {
  const collection = ctx.collection;
  const prev = last.get(collection) || { query: '', mode: 'hybrid', topK: 10, hits: null };
  const query = h('input', { id: 'search-query', name: 'query', type: 'search', required: true, value: prev.query, autocomplete: 'off' });
  const mode = h(
    'select',
    { id: 'search-mode', name: 'mode' },
    h('option', { value: 'hybrid' }, 'Hybrid'),
    h('option', { value: 'keyword' }, 'Keyword'),
    h('option', { value: 'vector' }, 'Vector'),
  );
  mode.value = prev.mode;
  const topK = h('input', { id: 'search-top-k', name: 'top_k', type: 'number', min: 1, max: 100, value: String(prev.topK) });
  const button = h('button', { type: 'submit', class: 'primary' }, 'Search');
  const form = h(
    'form',
    { class: 'panel search-form' },
    h('div', { class: 'field grow' }, h('label', { for: 'search-query' }, 'Query'), query),
    h('div', { class: 'field' }, h('label', { for: 'search-mode' }, 'Mode'), mode),
    h('div', { class: 'field narrow' }, h('label', { for: 'search-top-k' }, 'Results'), topK),
    h('div', { class: 'field end' }, button),
  );
  const results = h('div', { class: 'results', 'aria-live': 'polite' });
  root.append(h('h2', { tabindex: -1 }, 'Search', h('span', { class: 'sub' }, ` ${collection}`)), form, results);

  function draw(state) {
    clear(results);
    if (!state.hits) return;
    if (!state.hits.length) {
      results.append(h('p', { class: 'empty' }, 'No results.'));
      return;
    }
    const top = Math.max(...state.hits.map((x) => x.score), 1e-9);
    results.append(
      h('p', { class: 'muted results-count' }, `${state.hits.length} result${state.hits.length === 1 ? '' : 's'} · ${state.mode}`),
      h(
        'ol',
        { class: 'hits' },
        state.hits.map((hit, i) =>
          h(
            'li',
            { class: 'hit', 'data-chunk': hit.chunk_id },
            h(
              'div',
              { class: 'hit-head' },
              h('span', { class: 'hit-rank' }, `${i + 1}`),
              h('span', { class: 'hit-source' }, sourceLabel(hit.filename, hit.page, hit.location)),
              h(
                'span',
                { class: 'hit-score', title: 'Score' },
                h('meter', { min: 0, max: top, value: Math.max(0, hit.score), 'aria-hidden': 'true' }),
                h('span', { class: 'score' }, `score ${hit.score.toFixed(4)}`),
              ),
            ),
            h('p', { class: 'hit-text' }, marked(tidy(hit.text), termRanges(tidy(hit.text), state.query))),
          ),
        ),
      ),
    );
  }
  draw(prev);

  let alive = true;
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const q = query.value.trim();
    if (!q) return;
    const k = Math.min(100, Math.max(1, Number(topK.value) || 10));
    button.disabled = true;
    results.setAttribute('aria-busy', 'true');
    try {
      const hits = await api.search(collection, q, mode.value, k);
      const state = { query: q, mode: mode.value, topK: k, hits };
      last.set(collection, state);
      if (alive) draw(state);
    } catch (err) {
      if (alive) ctx.notify(err);
    } finally {
      button.disabled = false;
      results.removeAttribute('aria-busy');
    }
  });
  if (!prev.hits) query.focus();
  return () => {
    alive = false;
  };
}
