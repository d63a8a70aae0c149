// Documents: drop or pick files, follow each upload (bytes sent, then the ingest job live),
// list the collection's documents, delete them.

import { api, uploadFile } from './api.js';
import { append, clear, formatBytes, h } from './dom.js';
import { confirmButton } from './collections.js';

// Uploads outlive the view: leaving the page and coming back still shows them.
const uploads = new Map(); // collection → [entry]
let listener = null; // the open view's (collection, entry) callback
let serial = 0;
const queue = [];
let active = 0;
const PARALLEL = 2;
const TERMINAL = new Set(['done', 'failed', 'error']);

function changed(entry) {
  if (listener) listener(entry);
}

function enqueue(collection, file) {
  const entry = { id: ++serial, collection, name: file.name, size: file.size, progress: 0, phase: 'waiting', message: '' };
  if (!uploads.has(collection)) uploads.set(collection, []);
  uploads.get(collection).push(entry);
  queue.push({ entry, file });
  pump();
  return entry;
}

function pump() {
  while (active < PARALLEL && queue.length) {
    const { entry, file } = queue.shift();
    active += 1;
    entry.phase = 'uploading';
    changed(entry);
    uploadFile(entry.collection, file, (f) => {
      entry.progress = f;
      changed(entry);
    })
      .then((doc) => {
        entry.docId = doc.id;
        entry.jobId = doc.job_id;
        entry.phase = doc.status;
        if (doc.duplicate) entry.message = 'Already in this collection';
        changed(entry);
        if (!TERMINAL.has(entry.phase) && entry.jobId != null) follow(entry);
      })
      .catch((err) => {
        entry.phase = 'error';
        entry.message = err.friendly || String(err);
        changed(entry);
      })
      .finally(() => {
        active -= 1;
        pump();
      });
  }
}

/** Polls the ingest job until it is done or failed. */
async function follow(entry) {
  let misses = 0;
  while (!TERMINAL.has(entry.phase)) {
    await new Promise((r) => setTimeout(r, 700));
    try {
      const job = await api.job(entry.jobId);
      misses = 0;
      if (job.status !== entry.phase || (job.error || '') !== entry.message) {
        entry.phase = job.status;
        entry.message = job.error || entry.message;
        changed(entry);
      }
    } catch (err) {
      misses += 1;
      if (misses >= 20 || err.status === 404 || err.status === 401 || err.status === 403) {
        entry.phase = 'error';
        entry.message = `Lost track of the ingest job: ${err.friendly}`;
        changed(entry);
      }
    }
  }
}

const PHASE_TEXT = {
  waiting: 'Waiting',
  uploading: 'Uploading',
  queued: 'Queued',
  running: 'Ingesting',
  done: 'Done',
  failed: 'Failed',
  error: 'Upload failed',
};

function statusBadge(phase) {
  const cls = phase === 'error' ? 'failed' : phase;
  return h('span', { class: `badge badge-${cls}` }, PHASE_TEXT[phase] || phase);
}

export function renderDocuments(root, ctx) {
  const collection = ctx.collection;
  const fileInput = h('input', { type: 'file', id: 'file-input', multiple: true, class: 'sr-only' });
  const drop = h(
    'div',
    { class: 'drop' },
    h('p', { class: 'drop-title' }, 'Drop files here'),
    h('p', { class: 'muted' }, 'or'),
    h('label', { for: 'file-input', class: 'button primary' }, 'Choose files'),
    fileInput,
    h('p', { class: 'hint' }, 'PDF, Markdown, HTML or plain text. Several at once is fine.'),
  );
  const uploadList = h('ul', { class: 'uploads', 'aria-label': 'Uploads' });
  const table = h('div', { class: 'doc-list' }, h('p', { class: 'muted' }, 'Loading…'));
  root.append(
    h('h2', { tabindex: -1 }, 'Documents', h('span', { class: 'sub' }, ` in ${collection}`)),
    h('section', { class: 'panel', 'aria-label': 'Upload documents' }, drop, uploadList),
    h('section', { 'aria-label': 'Documents in the collection' }, table),
  );

  const rows = new Map(); // entry id → {li, bar, status}
  function drawEntry(entry) {
    let row = rows.get(entry.id);
    if (!row) {
      const bar = h('progress', { max: 100, value: 0, 'aria-label': `Upload progress of ${entry.name}` });
      const status = h('span', { class: 'upload-status', 'aria-live': 'polite' });
      const li = h(
        'li',
        { class: 'upload', 'data-file': entry.name },
        h('span', { class: 'upload-name' }, entry.name, h('span', { class: 'upload-size muted' }, formatBytes(entry.size))),
        bar,
        status,
      );
      row = { li, bar, status };
      rows.set(entry.id, row);
      uploadList.prepend(li);
    }
    row.bar.value = Math.round(entry.progress * 100);
    row.bar.hidden = entry.phase !== 'uploading' && entry.phase !== 'waiting';
    row.li.dataset.phase = entry.phase;
    const label = entry.phase === 'uploading' ? `Uploading ${Math.round(entry.progress * 100)}%` : null;
    append(clear(row.status), [
      label ? h('span', { class: 'badge badge-running' }, label) : statusBadge(entry.phase),
      entry.message ? h('span', { class: 'upload-message' }, entry.message) : null,
    ]);
  }
  for (const e of uploads.get(collection) || []) drawEntry(e);

  let alive = true;
  let timer = null;
  let seq = 0;
  let shown = '';
  async function load() {
    const mine = ++seq;
    clearTimeout(timer);
    try {
      const docs = await api.documents(collection);
      if (!alive || mine !== seq) return;
      // Redraw only on change, so a pending delete confirmation or focus is not lost.
      const json = JSON.stringify(docs);
      if (json !== shown) drawTable(docs);
      shown = json;
      if (docs.some((d) => d.status === 'queued' || d.status === 'running')) timer = setTimeout(load, 1500);
    } catch (err) {
      if (!alive || mine !== seq) return;
      shown = '';
      clear(table).append(h('p', { class: 'muted' }, 'Could not load the documents.'));
      ctx.notify(err);
    }
  }

  function drawTable(docs) {
    clear(table);
    if (!docs.length) {
      table.append(h('p', { class: 'empty' }, 'No documents yet. Upload some above.'));
      return;
    }
    const head = ['Name', 'Format', 'Size', 'Chunks', 'Status'];
    table.append(
      h(
        'table',
        { class: 'table docs' },
        h('caption', { class: 'sr-only' }, `Documents in ${collection}`),
        h('thead', {}, h('tr', {}, head.map((t) => h('th', { scope: 'col', class: t === 'Size' || t === 'Chunks' ? 'num' : null }, t)), h('th', { scope: 'col' }, h('span', { class: 'sr-only' }, 'Actions')))),
        h(
          'tbody',
          {},
          docs.map((d) =>
            h(
              'tr',
              { 'data-doc': d.filename, 'data-status': d.status },
              h('th', { scope: 'row', 'data-label': 'Name' }, h('span', { class: 'doc-name' }, d.filename), d.title && d.title !== d.filename ? h('span', { class: 'doc-title muted' }, d.title) : null),
              h('td', { 'data-label': 'Format' }, d.format || '—'),
              h('td', { 'data-label': 'Size', class: 'num' }, formatBytes(d.size)),
              h('td', { 'data-label': 'Chunks', class: 'num' }, d.status === 'done' ? String(d.chunks) : '—'),
              h('td', { 'data-label': 'Status', class: 'status' }, statusBadge(d.status), d.error ? h('span', { class: 'doc-error' }, d.error) : null),
              h(
                'td',
                { class: 'actions' },
                confirmButton(['Delete', h('span', { class: 'sr-only' }, ` ${d.filename}`)], `Delete ${d.filename}?`, async () => {
                  try {
                    await api.deleteDocument(collection, d.id);
                  } catch (err) {
                    ctx.notify(err);
                  }
                  await load();
                }),
              ),
            ),
          ),
        ),
      ),
    );
  }

  listener = (entry) => {
    if (entry.collection !== collection) return;
    drawEntry(entry);
    if (entry.phase === 'queued' || TERMINAL.has(entry.phase)) load();
  };

  const add = (files) => {
    for (const f of files) enqueue(collection, f);
  };
  fileInput.addEventListener('change', () => {
    add([...fileInput.files]);
    fileInput.value = '';
  });
  // Dropping anywhere on the page uploads; the zone lights up while files are over it.
  const over = (e) => {
    if (!e.dataTransfer || ![...e.dataTransfer.types].includes('Files')) return;
    e.preventDefault();
    drop.classList.add('over');
  };
  const leave = (e) => {
    if (!e.relatedTarget) drop.classList.remove('over');
  };
  const dropped = (e) => {
    if (!e.dataTransfer || !e.dataTransfer.files.length) return;
    e.preventDefault();
    drop.classList.remove('over');
    add([...e.dataTransfer.files]);
  };
  window.addEventListener('dragover', over);
  window.addEventListener('dragleave', leave);
  window.addEventListener('drop', dropped);

  load();
  return () => {
    alive = false;
    clearTimeout(timer);
    listener = null;
    window.removeEventListener('dragover', over);
    window.removeEventListener('dragleave', leave);
    window.removeEventListener('drop', dropped);
  };
}
