// Talks to kb's REST API (v1): the API key, error shapes, uploads with progress, and the
// streamed answers of /ask (Server-Sent Events over a POST).

import { parseSse } from './sse.js';

const KEY = 'kb.apiKey';

export function getKey() {
  return sessionStorage.getItem(KEY) || '';
}

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

/** An error from the API (status > 0) or from the network (status 0). */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }

  /** A sentence for people. */
  get friendly() {
    switch (this.status) {
      case 0:
        if (this.code !== 'network') return this.message;
        return 'Cannot reach the kb server. Check that it is running, then try again.';
      case 401:
        return getKey()
          ? `The server did not accept this API key${this.message ? ` (${this.message})` : ''}. Enter another one.`
          : 'This server requires an API key. Enter one to continue.';
      case 403:
        return `Your API key is not allowed to do this (${this.message}).`;
      case 413:
        return `Too large for the server: ${this.message}.`;
      case 503:
        return 'The server is starting up or busy. Try again in a moment.';
      default:
        return this.message || `Request failed (HTTP ${this.status}).`;
    }
  }
}

function unauthorized(err) {
  if (err.status === 401) window.dispatchEvent(new CustomEvent('kb:unauthorized', { detail: err }));
  return err;
}

function authHeaders(extra = {}) {
  const key = getKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

/** The ApiError in a failed response's `{"error": {"code", "message"}}` body. */
function errorFrom(status, text) {
  let code = 'http_' + status;
  let message = '';
  try {
    const body = JSON.parse(text);
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || '';
    }
  } catch {
    message = '';
  }
  return unauthorized(new ApiError(status, code, message));
}

async function send(method, path, body, signal) {
  const headers = authHeaders(body === undefined ? {} : { 'Content-Type': 'application/json' });
  try {
    return await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'network', e.message);
  }
}

/** JSON from the API, or null for 204. Throws ApiError. */
export async function request(method, path, body) {
  const res = await send(method, path, body);
  const text = await res.text().catch(() => '');
  if (!res.ok) throw errorFrom(res.status, text);
  return text ? JSON.parse(text) : null;
}

const seg = encodeURIComponent;

export const api = {
  ready: () => request('GET', '/readyz'),
  collections: () => request('GET', '/v1/collections').then((r) => r.collections),
  createCollection: (name) => request('POST', '/v1/collections', { name }),
  deleteCollection: (name) => request('DELETE', `/v1/collections/${seg(name)}`),
  documents: (c) => request('GET', `/v1/collections/${seg(c)}/documents`).then((r) => r.documents),
  deleteDocument: (c, id) => request('DELETE', `/v1/collections/${seg(c)}/documents/${seg(id)}`),
  job: (id) => request('GET', `/v1/jobs/${seg(id)}`),
  search: (c, query, mode, topK) =>
    request('POST', `/v1/collections/${seg(c)}/search`, { query, mode, top_k: topK }).then((r) => r.hits),
  /** `{rating: 'up'|'down', comment, question, answer, citations}` → `{id}`. */
  feedback: (c, body) => request('POST', `/v1/collections/${seg(c)}/feedback`, body),
};

/**
 * Uploads one file; `onProgress(fraction)` follows the bytes sent. Resolves to the document
 * the server registered (`{id, filename, job_id, status, duplicate?}`).
 */
export function uploadFile(collection, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', `/v1/collections/${seg(collection)}/documents`);
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) onProgress(e.loaded / e.total);
    };
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        onProgress(1);
        try {
          resolve(JSON.parse(xhr.responseText).documents[0]);
        } catch {
          reject(new ApiError(xhr.status, 'bad_response', 'the server sent an unreadable answer'));
        }
      } else {
        reject(errorFrom(xhr.status, xhr.responseText));
      }
    };
    xhr.onerror = () => reject(new ApiError(0, 'network', 'upload failed'));
    const form = new FormData();
    form.append('file', file, file.name);
    xhr.send(form);
  });
}

/**
 * Asks a question with a streamed answer. `history` is the conversation before it
 * (`[{question, answer}]`), so a follow-up can lean on it. `on.token(text)` gets each piece
 * of the draft as it is generated; resolves to the verified `{answer, kind, citations,
 * question}`, which replaces the draft. Throws ApiError.
 */
export async function ask(collection, question, history, on, signal) {
  const body = { question, top_k: 5, stream: true, history };
  const res = await send('POST', `/v1/collections/${seg(collection)}/ask`, body, signal);
  if (!res.ok) throw errorFrom(res.status, await res.text().catch(() => ''));
  let final = null;
  let failure = null;
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  const feed = parseSse((event, data) => {
    let payload = {};
    try {
      payload = JSON.parse(data);
    } catch {
      return;
    }
    if (event === 'token') on.token(payload.text || '');
    else if (event === 'citations') final = payload;
    else if (event === 'error') {
      const e = payload.error || {};
      failure = new ApiError(500, e.code || 'error', e.message || 'the answer failed');
    }
  });
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      feed(value);
    }
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'interrupted', 'The connection closed before the answer was complete.');
  }
  if (failure) throw failure;
  if (!final) throw new ApiError(0, 'interrupted', 'The answer ended before it was complete.');
  return final;
}
