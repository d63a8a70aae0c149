// The UI's pure helpers, without a browser: the SSE parser and the citation logic.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseSse } from '../../web/js/sse.js';
import { answerParts, citedRanges, claimsByCitation, formatBytes, termRanges, tidy } from '../../web/js/dom.js';

test('SSE events split anywhere across reads', () => {
  const stream = 'event: token\ndata: {"text":"Hel"}\n\nevent: token\r\ndata: {"text":"lo"}\r\n\r\n: comment\n\nevent: citations\ndata: {"a":1,\ndata: "b":2}\n\nevent: done\ndata: {}\n\n';
  for (const size of [1, 3, 7, stream.length]) {
    const got = [];
    const feed = parseSse((event, data) => got.push([event, data]));
    for (let i = 0; i < stream.length; i += size) feed(stream.slice(i, i + size));
    assert.deepEqual(got, [
      ['token', '{"text":"Hel"}'],
      ['token', '{"text":"lo"}'],
      ['citations', '{"a":1,\n"b":2}'],
      ['done', '{}'],
    ]);
  }
});

test('an event is only complete at its blank line', () => {
  const got = [];
  const feed = parseSse((event, data) => got.push([event, data]));
  feed('event: token\ndata: {"text":"x"}\n');
  assert.deepEqual(got, []);
  feed('\n');
  assert.deepEqual(got, [['token', '{"text":"x"}']]);
});

test('answers split at their citation markers', () => {
  assert.deepEqual(answerParts('Torque is 42 Nm [1]. Backups [2, 3].'), [
    { text: 'Torque is 42 Nm ' },
    { refs: [1], raw: '[1]' },
    { text: '. Backups ' },
    { refs: [2, 3], raw: '[2, 3]' },
    { text: '.' },
  ]);
  const claims = claimsByCitation('Torque is 42 Nm [1][2]. Backups run nightly [2].');
  assert.deepEqual(claims.get(1), ['Torque is 42 Nm ']);
  assert.deepEqual(claims.get(2), ['Torque is 42 Nm ', '. Backups run nightly ']);
});

test('the cited part: a quoted sentence, else the sentences sharing most words', () => {
  const passage = 'Chapter 2: Blade Assembly\nThe turbine requires a torque of 42 newton-metres on each blade bolt.\nEach rotor carries three blades.';
  const quoted = citedRanges(passage, ['Extractive answer (quoted from the documents): The turbine requires a torque of 42 newton-metres on each blade bolt. ']);
  assert.deepEqual(quoted.map(([s, e]) => passage.slice(s, e)), ['The turbine requires a torque of 42 newton-metres on each blade bolt.']);
  const paraphrased = citedRanges(passage, ['Each blade bolt needs a torque of 42 newton-meters ']);
  assert.deepEqual(paraphrased.map(([s, e]) => passage.slice(s, e)), ['The turbine requires a torque of 42 newton-metres on each blade bolt.']);
  assert.deepEqual(citedRanges(passage, ['Something else entirely ']), []);
  const versions = 'Orion supports Debian 12 and Ubuntu 24.04; other distributions are not tested. Backups run nightly.';
  const [[s, e]] = citedRanges(versions, ['It runs on Debian 12 and Ubuntu 24.04 ']);
  assert.equal(versions.slice(s, e), 'Orion supports Debian 12 and Ubuntu 24.04; other distributions are not tested.');
});

test('display helpers', () => {
  assert.equal(tidy('a\n\n\nb\n  \nc\nd'), 'a\nb\nc\nd');
  assert.deepEqual(termRanges('Blade bolts and the blade', 'blade torque'), [[0, 5], [20, 25]]);
  assert.equal(formatBytes(570), '570 B');
  assert.equal(formatBytes(24713), '24 KiB');
  assert.equal(formatBytes(4096), '4.0 KiB');
  assert.equal(formatBytes(3.5 * 1024 * 1024), '3.5 MiB');
  assert.equal(formatBytes(null), '—');
});
