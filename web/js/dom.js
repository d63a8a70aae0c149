// Building the page. Everything that comes from documents, answers or the server goes in as
// text nodes: never through innerHTML.

/** An element: `h('a', {href, class, onclick}, 'text', child, [more])`. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'value' || k === 'checked') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function formatBytes(n) {
  if (n === null || n === undefined) return '—';
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB'];
  let v = n;
  let i = -1;
  do {
    v /= 1024;
    i += 1;
  } while (v >= 1024 && i < units.length - 1);
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

/** Document text for display: blank lines between paragraphs become one line break. */
export function tidy(text) {
  return String(text).replace(/[ \t]*\n[ \t]*(?:\n\s*)+/g, '\n').trim();
}

/** Where a citation points, for people: the API's location ("page 2", "slide 3", "sheet Costs, rows 2–9"), else the page. */
export function whereLabel(page, location) {
  if (location !== null && location !== undefined && location !== '') return location;
  return page === null || page === undefined ? null : `page ${page}`;
}

/** "handbook.pdf · page 2", "deck.pptx · slide 3" */
export function sourceLabel(filename, page, location) {
  const where = whereLabel(page, location);
  return where === null ? filename : `${filename} · ${where}`;
}

/** `text` as text nodes, with the `[start, end)` ranges wrapped in <mark>. */
export function marked(text, ranges) {
  const frag = document.createDocumentFragment();
  const sorted = [...ranges].sort((a, b) => a[0] - b[0]);
  let at = 0;
  for (const [s, e] of sorted) {
    const start = Math.max(s, at);
    if (e <= start) continue;
    if (start > at) frag.appendChild(document.createTextNode(text.slice(at, start)));
    frag.appendChild(h('mark', {}, text.slice(start, e)));
    at = e;
  }
  if (at < text.length) frag.appendChild(document.createTextNode(text.slice(at)));
  return frag;
}

const STOP = new Set(
  ('the and for are was were with that this from have has had not but all any can its our out you your ' +
    'their there they them then than what when where which who how why does did into each per also may ' +
    'must should would could will about over under more most some such only other these those been being')
    .split(' '),
);

function contentWords(text) {
  const out = new Set();
  for (const m of text.toLowerCase().matchAll(/[\p{L}\p{N}]+/gu)) {
    if (m[0].length > 2 && !STOP.has(m[0])) out.add(m[0]);
  }
  return out;
}

/** Spans of `text` holding any of the query's words (for search results). */
export function termRanges(text, query) {
  const terms = contentWords(query);
  const out = [];
  if (!terms.size) return out;
  for (const m of text.matchAll(/[\p{L}\p{N}]+/gu)) {
    if (terms.has(m[0].toLowerCase())) out.push([m.index, m.index + m[0].length]);
  }
  return out;
}

/** Sentence spans of `text`, trimmed: [[start, end], ...]. A stop ends one only before a space ("24.04" stays whole). */
function sentences(text) {
  const out = [];
  for (const m of text.matchAll(/[^\n]+?(?:[.!?]+(?=\s|$)|(?=\n)|$)/g)) {
    const raw = m[0];
    const lead = raw.length - raw.trimStart().length;
    const body = raw.trim();
    if (body) out.push([m.index + lead, m.index + lead + body.length]);
  }
  return out;
}

/**
 * The parts of a cited `passage` that the answer's `claims` (the answer text before each
 * marker citing it) rest on: a claim quoted word for word, else the passage's sentences
 * sharing most words with the claims.
 */
export function citedRanges(passage, claims) {
  const exact = [];
  for (const claim of claims) {
    const pieces = [claim, ...claim.split(/(?<=[.!?:])\s+/)].map((p) => p.trim()).filter((p) => p.length >= 12);
    for (const p of pieces) {
      const i = passage.indexOf(p);
      if (i >= 0) {
        exact.push([i, i + p.length]);
        break;
      }
    }
  }
  if (exact.length) return exact;
  const want = contentWords(claims.join(' '));
  if (!want.size) return [];
  const scored = sentences(passage).map((span) => {
    const have = contentWords(passage.slice(span[0], span[1]));
    let score = 0;
    for (const w of have) if (want.has(w)) score += 1;
    return { span, score };
  });
  const best = Math.max(0, ...scored.map((s) => s.score));
  if (best < 2) return [];
  const floor = Math.max(2, Math.ceil(best * 0.75));
  return scored
    .filter((s) => s.score >= floor)
    .sort((a, b) => b.score - a.score)
    .slice(0, 3)
    .map((s) => s.span);
}

const MARKER = /\[(\d+(?:\s*,\s*\d+)*)\]/g;

/** The answer split at its citation markers: [{text}, {refs: [1, 2]}, ...]. */
export function answerParts(answer) {
  const parts = [];
  let at = 0;
  for (const m of answer.matchAll(MARKER)) {
    if (m.index > at) parts.push({ text: answer.slice(at, m.index) });
    parts.push({ refs: m[1].split(',').map((n) => Number(n.trim())), raw: m[0] });
    at = m.index + m[0].length;
  }
  if (at < answer.length) parts.push({ text: answer.slice(at) });
  return parts;
}

/** For each cited number, the answer text before the markers citing it. */
export function claimsByCitation(answer) {
  const claims = new Map();
  let last = '';
  for (const p of answerParts(answer)) {
    if (p.text !== undefined) {
      if (p.text.trim()) last = p.text;
      continue;
    }
    for (const n of p.refs) {
      if (!claims.has(n)) claims.set(n, []);
      claims.get(n).push(last);
    }
  }
  return claims;
}
