// Ask: a chat per collection. A draft answer streams in, then the server's verified answer
// replaces it; its [n] markers link to source cards showing the passage with the cited part
// highlighted. Each question is sent with the conversation before it, so follow-ups work.
// Each answer takes a thumbs up or down with an optional comment. The conversation is kept
// in sessionStorage, so it survives a reload.

import { api, ask } from './api.js';
import { answerParts, citedRanges, claimsByCitation, clear, h, marked, sourceLabel, tidy, whereLabel } from './dom.js';

const EXTRACTIVE_PREFIX = /^Extractive answer \(quoted from the documents\):\s*/;

function load(collection) {
  try {
    const turns = JSON.parse(sessionStorage.getItem(`kb.chat.${collection}`) || '[]');
    // A reload cut off any answer that was streaming.
    for (const t of turns) if (t.state === 'streaming') t.state = 'interrupted';
    return Array.isArray(turns) ? turns : [];
  } catch {
    return [];
  }
}

function save(collection, turns) {
  try {
    sessionStorage.setItem(`kb.chat.${collection}`, JSON.stringify(turns));
  } catch {
    // Storage full: the conversation just won't survive a reload.
  }
}

function shownAnswer(turn) {
  return (turn.answer || '').replace(EXTRACTIVE_PREFIX, '');
}

/** The answer as text and marker buttons that open the source cards. */
function answerBody(turn, open) {
  const p = h('p', { class: 'answer-text' });
  const cites = new Map((turn.citations || []).map((c) => [c.n, c]));
  const parts = answerParts(shownAnswer(turn));
  parts.forEach((part, i) => {
    if (part.text !== undefined) {
      // "metres [1]." reads as "metres¹.": no gap before a marker.
      p.append(parts[i + 1] && parts[i + 1].refs ? part.text.trimEnd() : part.text);
      return;
    }
    if (!part.refs.every((n) => cites.has(n))) {
      p.append(` ${part.raw}`);
      return;
    }
    p.append(
      h(
        'sup',
        { class: 'refs' },
        part.refs.map((n) => {
          const c = cites.get(n);
          return h('button', { type: 'button', class: 'ref', 'aria-label': `Source ${n}: ${sourceLabel(c.filename, c.page, c.location)}`, onclick: () => open(n) }, String(n));
        }),
      ),
    );
  });
  return p;
}

function sourceCards(turn, index) {
  const claims = claimsByCitation(shownAnswer(turn));
  const list = h('ol', { class: 'sources', 'aria-label': 'Sources' });
  for (const c of [...(turn.citations || [])].sort((a, b) => a.n - b.n)) {
    const passage = tidy(c.text);
    const ranges = citedRanges(passage, claims.get(c.n) || [shownAnswer(turn)]);
    const first = ranges.length ? [...ranges].sort((a, b) => a[0] - b[0])[0] : [0, 0];
    const preview = (ranges.length ? passage.slice(first[0], first[1]) : passage).slice(0, 140);
    list.append(
      h(
        'li',
        { class: 'source', 'data-n': c.n },
        h(
          'details',
          { id: `turn${index}-src${c.n}` },
          h(
            'summary',
            {},
            h('span', { class: 'src-n' }, String(c.n)),
            h('span', { class: 'src-file' }, c.filename),
            whereLabel(c.page, c.location) !== null ? h('span', { class: 'src-page' }, whereLabel(c.page, c.location)) : null,
            h('span', { class: 'src-preview' }, preview),
          ),
          h('blockquote', { class: 'passage' }, marked(passage, ranges)),
        ),
      ),
    );
  }
  return list;
}

function copyText(turn) {
  let text = shownAnswer(turn);
  if (turn.citations && turn.citations.length) {
    text += '\n\nSources:\n' + turn.citations.map((c) => `[${c.n}] ${sourceLabel(c.filename, c.page, c.location).replace(' · ', ', ')}`).join('\n');
  }
  return text;
}

async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = h('textarea', { class: 'offscreen', 'aria-hidden': 'true' });
    area.value = text;
    document.body.append(area);
    area.select();
    const ok = document.execCommand('copy');
    area.remove();
    return ok;
  }
}

/** The turns before `i` that got an answer, as the server takes them (the last few). */
function historyBefore(turns, i) {
  return turns
    .slice(0, i)
    .filter((t) => t.state === 'done')
    .slice(-4)
    .map((t) => ({ question: t.asked || t.q, answer: shownAnswer(t) }));
}

/** Thumbs up or down, then an optional comment; sent once. */
function feedbackView(turn, collection, onChange) {
  const box = h('div', { class: 'feedback', 'aria-label': 'Feedback on this answer' });
  if (turn.feedback && turn.feedback.sent) {
    box.append(h('p', { class: 'feedback-done' }, 'Thanks for the feedback.'));
    return box;
  }
  const rate = (rating) => {
    turn.feedback = { rating, sent: false };
    onChange();
  };
  const up = h('button', { type: 'button', class: 'quiet thumb', 'aria-label': 'Good answer', 'aria-pressed': String(turn.feedback?.rating === 'up'), onclick: () => rate('up') }, 'Good answer');
  const down = h('button', { type: 'button', class: 'quiet thumb', 'aria-label': 'Bad answer', 'aria-pressed': String(turn.feedback?.rating === 'down'), onclick: () => rate('down') }, 'Bad answer');
  box.append(h('span', { class: 'feedback-ask' }, 'Was this right?'), up, down);
  if (turn.feedback && !turn.feedback.sent) {
    const comment = h('input', { type: 'text', class: 'feedback-comment', 'aria-label': 'Comment (optional)', placeholder: 'Comment (optional)', maxlength: 4000 });
    const status = h('span', { class: 'feedback-status', role: 'status' });
    const send = h('button', { type: 'submit', class: 'quiet' }, 'Send feedback');
    const form = h('form', { class: 'feedback-form' }, comment, send, status);
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      send.disabled = true;
      try {
        await api.feedback(collection, {
          rating: turn.feedback.rating,
          comment: comment.value.trim() || null,
          question: turn.q,
          answer: turn.answer,
          citations: turn.citations || [],
        });
        turn.feedback.sent = true;
        onChange();
      } catch (err) {
        send.disabled = false;
        status.textContent = err.friendly || String(err);
      }
    });
    box.append(form);
  }
  return box;
}

const LABELS = {
  generated: ['Answer', ''],
  extractive: ['Extractive answer', 'Sentences quoted from the documents; no model wrote this.'],
  not_in_corpus: ['Not in the documents', ''],
};

/** One question and its answer. */
function turnView(turn, index, collection, redraw) {
  const streaming = turn.state === 'streaming';
  const kind = turn.state === 'error' ? 'error' : streaming ? 'streaming' : turn.kind || 'generated';
  const open = (n) => {
    const d = document.getElementById(`turn${index}-src${n}`);
    if (!d) return;
    d.open = true;
    d.scrollIntoView({ block: 'nearest', behavior: 'smooth' });
    d.querySelector('summary').focus();
  };
  const [label, note] =
    turn.state === 'error'
      ? ['No answer', '']
      : streaming
        ? ['Draft', 'Checking each sentence against the sources…']
        : turn.state === 'interrupted'
          ? ['Stopped', 'The answer was cut off before it finished.']
          : LABELS[turn.kind] || LABELS.generated;
  const head = h('div', { class: 'answer-head' }, h('span', { class: `kind kind-${kind}` }, label));
  if (!streaming && turn.state !== 'error') {
    const btn = h('button', { type: 'button', class: 'quiet copy', 'aria-label': 'Copy answer' }, 'Copy');
    btn.addEventListener('click', async () => {
      btn.textContent = (await copy(copyText(turn))) ? 'Copied' : 'Copy failed';
      setTimeout(() => (btn.textContent = 'Copy'), 2000);
    });
    head.append(btn);
  }
  const article = h(
    'article',
    { class: `answer answer-${kind}`, 'aria-busy': streaming ? 'true' : 'false', 'aria-label': `Answer ${index + 1}` },
    head,
    note ? h('p', { class: 'kind-note' }, note) : null,
    turn.state === 'error' ? h('p', { class: 'answer-error' }, turn.error) : null,
    streaming && !turn.answer ? h('p', { class: 'answer-text thinking' }, 'Finding passages and writing…') : null,
    streaming && turn.answer ? h('p', { class: 'answer-text' }, turn.answer) : null,
    !streaming && turn.answer ? answerBody(turn, open) : null,
    !streaming && turn.asked && turn.asked !== turn.q ? h('p', { class: 'kind-note asked' }, `Understood as: ${turn.asked}`) : null,
    !streaming && turn.citations && turn.citations.length ? sourceCards(turn, index) : null,
    turn.state === 'done' && turn.kind !== 'not_in_corpus' ? feedbackView(turn, collection, redraw) : null,
  );
  return h(
    'li',
    { class: 'turn' },
    h('div', { class: 'question' }, h('span', { class: 'sr-only' }, 'You asked: '), h('p', {}, turn.q)),
    article,
  );
}

export function renderAsk(root, ctx) {
  const collection = ctx.collection;
  const turns = load(collection);
  const log = h('ol', { class: 'chat', 'aria-label': 'Conversation', 'aria-live': 'polite' });
  const question = h('textarea', { id: 'question', name: 'question', rows: 2, placeholder: 'Ask something the documents answer…', autocomplete: 'off' });
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Ask');
  const clearBtn = h('button', { type: 'button', class: 'quiet' }, 'Clear conversation');
  const form = h(
    'form',
    { class: 'ask-form' },
    h('label', { for: 'question', class: 'sr-only' }, `Question about ${collection}`),
    question,
    h('div', { class: 'ask-buttons' }, submit),
  );
  const empty = h('p', { class: 'empty' }, `Ask a question about the documents in ${collection}. Answers cite the passages they use.`);
  root.append(h('div', { class: 'view-head' }, h('h2', { tabindex: -1 }, 'Ask', h('span', { class: 'sub' }, ` ${collection}`)), clearBtn), empty, log, form);

  let controller = null;
  const items = [];
  function draw(i) {
    const node = turnView(turns[i], i, collection, () => {
      save(collection, turns);
      draw(i);
    });
    if (items[i]) items[i].replaceWith(node);
    else log.append(node);
    items[i] = node;
    empty.hidden = turns.length > 0;
    clearBtn.hidden = turns.length === 0;
  }
  function drawAll() {
    clear(log);
    items.length = 0;
    turns.forEach((_, i) => draw(i));
    empty.hidden = turns.length > 0;
    clearBtn.hidden = turns.length === 0;
  }
  drawAll();
  if (items.length) items[items.length - 1].scrollIntoView({ block: 'start' });

  async function run(q) {
    const turn = { q, answer: '', kind: null, citations: [], state: 'streaming' };
    turns.push(turn);
    const i = turns.length - 1;
    draw(i);
    save(collection, turns);
    items[i].scrollIntoView({ block: 'end' });
    controller = new AbortController();
    submit.textContent = 'Stop';
    let text = null;
    try {
      const final = await ask(
        collection,
        q,
        historyBefore(turns, i),
        {
          token: (piece) => {
            turn.answer += piece;
            const atBottom = window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 40;
            // Appends to the live text node instead of redrawing the whole turn.
            if (!text) {
              draw(i);
              text = items[i].querySelector('.answer-text');
            } else text.textContent = turn.answer;
            // Follows the answer as it grows, unless the reader scrolled up.
            if (atBottom) window.scrollTo(0, document.documentElement.scrollHeight);
          },
        },
        controller.signal,
      );
      // The verified answer replaces the draft.
      Object.assign(turn, { answer: final.answer, kind: final.kind, citations: final.citations || [], asked: final.question || q, state: 'done' });
    } catch (err) {
      if (err.name === 'AbortError') turn.state = 'interrupted';
      else {
        turn.state = 'error';
        turn.error = err.friendly || String(err);
        if (err.status === 401) ctx.notify(err);
      }
    } finally {
      controller = null;
      submit.textContent = 'Ask';
      save(collection, turns);
      if (items[i] && items[i].isConnected) draw(i);
    }
  }

  form.addEventListener('submit', (e) => {
    e.preventDefault();
    if (controller) {
      controller.abort();
      return;
    }
    const q = question.value.trim();
    if (!q) return;
    question.value = '';
    run(q);
  });
  question.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      if (!controller) form.requestSubmit(); // while answering, only the Stop button stops
    }
  });
  clearBtn.addEventListener('click', () => {
    if (controller) controller.abort();
    turns.length = 0;
    save(collection, turns);
    drawAll();
    question.focus();
  });

  return () => {
    if (controller) controller.abort();
  };
}
