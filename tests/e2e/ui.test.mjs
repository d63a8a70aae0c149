// Browser tests of kb's web UI against a real `kb serve` (see harness.mjs). The tests run in
// order and share one server: the screenshots reuse the conversation of the first.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ARTIFACTS, FIXTURES, launchBrowser, startKb, watch } from './harness.mjs';

const ANSWER_MS = 180_000; // SmolLM2 on a loaded CPU: seconds to first token, ~20 s per 100
const INGEST_MS = 180_000;
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };
const UPLOAD_LIMIT = 1_000_000;

let kb;
let browser;
let context; // shared by the tests that continue each other's session
let page;
let problems;

/** A view's tab in the header navigation. */
function tab(p, name) {
  return p.locator('nav.tabs').getByRole('link', { name, exact: true });
}

async function createCollection(p, name) {
  await tab(p, 'Collections').click();
  await p.getByLabel('New collection').fill(name);
  await p.getByRole('button', { name: 'Create' }).click();
  await p.waitForURL(new RegExp(`#/c/${name}/documents$`));
  await p.getByRole('heading', { name: /Documents/ }).waitFor();
}

function docRow(p, filename) {
  return p.locator(`tr[data-doc="${filename.replace(/"/g, '\\"')}"]`);
}

async function waitForStatus(p, filename, status) {
  await p.waitForSelector(`tr[data-doc="${filename.replace(/"/g, '\\"')}"][data-status="${status}"]`, { timeout: INGEST_MS });
}

/** Asks in the Ask view; resolves to the finished answer's locator and the streamed text lengths seen. */
async function askQuestion(p, question) {
  await tab(p, 'Ask').click();
  const before = await p.locator('.turn').count();
  // Records every length the streaming answer's text went through.
  await p.evaluate(() => {
    window.__streamed = [];
    const obs = new MutationObserver(() => {
      const el = document.querySelector('.answer-streaming .answer-text:not(.thinking)');
      if (el) window.__streamed.push(el.textContent.length);
    });
    obs.observe(document.getElementById('view'), { subtree: true, childList: true, characterData: true });
  });
  await p.getByLabel(/Question about/).fill(question);
  await p.getByLabel(/Question about/).press('Enter');
  const answer = p.locator('.turn').nth(before).locator('article.answer');
  await answer.waitFor();
  await p.waitForFunction((i) => {
    const a = document.querySelectorAll('.turn')[i]?.querySelector('article.answer');
    return a && a.getAttribute('aria-busy') === 'false';
  }, before, { timeout: ANSWER_MS });
  const streamed = [...new Set(await p.evaluate(() => window.__streamed))];
  return { answer, streamed };
}

describe('kb web UI', () => {
  before(async () => {
    kb = await startKb({ config: `max_upload_bytes = ${UPLOAD_LIMIT}\n` });
    browser = await launchBrowser();
    context = await browser.newContext({ viewport: DESKTOP });
    await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: kb.url });
    page = await context.newPage();
    problems = watch(page);
    await page.goto(kb.url + '/');
  });

  after(async () => {
    await browser?.close();
    await kb?.stop();
  });

  test('collections, uploads, a streamed cited answer, search, delete, a failed upload', { timeout: 600_000 }, async () => {
    await createCollection(page, 'turbines');
    await page.getByLabel('Choose files').setInputFiles([path.join(FIXTURES, 'handbook.pdf'), path.join(FIXTURES, 'guide.md')]);

    // Per-file upload rows, then the live ingest status.
    await page.locator('li.upload[data-file="handbook.pdf"]').waitFor();
    await page.locator('li.upload[data-file="guide.md"]').waitFor();
    await waitForStatus(page, 'handbook.pdf', 'done');
    await waitForStatus(page, 'guide.md', 'done');
    await page.locator('li.upload[data-file="handbook.pdf"][data-phase="done"]').waitFor();
    const pdf = docRow(page, 'handbook.pdf');
    assert.equal(await pdf.locator('td[data-label="Format"]').innerText(), 'pdf');
    assert.match(await pdf.locator('td[data-label="Size"]').innerText(), /KiB/);
    assert.ok(Number(await pdf.locator('td[data-label="Chunks"]').innerText()) >= 4, 'the 4-page PDF has chunks');
    assert.match(await pdf.locator('td[data-label="Status"]').innerText(), /Done/);

    // A file that cannot be parsed fails, with the parser's message, in both places.
    await page.getByLabel('Choose files').setInputFiles(path.join(FIXTURES, 'binary.pdf'));
    await waitForStatus(page, 'binary.pdf', 'failed');
    const failed = await docRow(page, 'binary.pdf').locator('.doc-error').innerText();
    assert.match(failed, /binary data/, failed);
    await page.locator('li.upload[data-file="binary.pdf"][data-phase="failed"]').waitFor();
    assert.match(await page.locator('li.upload[data-file="binary.pdf"] .upload-message').innerText(), /binary data/);

    // Past the server's size limit: a clear 413 message.
    const big = path.join(os.tmpdir(), `kb-e2e-big-${process.pid}.txt`);
    fs.writeFileSync(big, 'x'.repeat(UPLOAD_LIMIT + 50_000));
    await page.getByLabel('Choose files').setInputFiles(big);
    const bigRow = page.locator(`li.upload[data-file="${path.basename(big)}"]`);
    await page.locator(`li.upload[data-file="${path.basename(big)}"][data-phase="error"]`).waitFor({ timeout: 60_000 });
    const bigMessage = await bigRow.locator('.upload-message').innerText();
    fs.rmSync(big);
    assert.match(bigMessage, /Too large/, bigMessage);

    // Collections list shows the counts.
    await tab(page, 'Collections').click();
    const row = page.locator('tr[data-collection="turbines"]');
    await row.waitFor();
    assert.equal(await row.locator('td[data-label="Documents"]').innerText(), '3');
    assert.ok(Number(await row.locator('td[data-label="Chunks"]').innerText()) > 0);

    // Ask: the answer streams in, then cites the PDF's page 2.
    await tab(page, 'Documents').click();
    // SmolLM2-135M decodes greedily, so an answer is repeatable; a small model can still go
    // astray on a phrasing, hence a second one before giving up.
    const questions = ['How much torque does each Zephyr-9 blade bolt need?', 'What is the blade bolt torque?'];
    let answer;
    let card;
    let kind;
    let text;
    for (const q of questions) {
      const asked = await askQuestion(page, q);
      answer = asked.answer;
      kind = (await answer.getAttribute('class')).match(/answer-(\w+)/)[1];
      text = await answer.locator('.answer-text').innerText();
      console.log(`answer (${kind}) to ${JSON.stringify(q)}: ${text}`);
      assert.ok(['generated', 'extractive'].includes(kind), `an answer from the documents, not ${kind}`);
      if (kind === 'generated') assert.ok(asked.streamed.length >= 2, `the answer streamed in (text lengths seen: ${asked.streamed})`);
      if (kind === 'extractive') assert.match(await answer.locator('.kind').innerText(), /Extractive/i);
      card = answer.locator('li.source').filter({ has: page.locator('.src-file', { hasText: 'handbook.pdf' }) }).filter({ has: page.locator('.src-page', { hasText: 'page 2' }) }).first();
      if (await card.count()) break;
    }
    assert.equal(await card.count(), 1, 'a source card names handbook.pdf, page 2');
    const n = await card.getAttribute('data-n');
    assert.equal(await card.locator('details').getAttribute('open'), null, 'source cards start closed');
    // Open it from its marker in the answer when the answer has one, else from the card.
    const marker = answer.locator('button.ref', { hasText: new RegExp(`^${n}$`) }).first();
    if (await marker.count()) await marker.click();
    else await card.locator('summary').click();
    await card.locator('details[open]').waitFor();
    const passage = card.locator('.passage');
    assert.ok(await passage.isVisible());
    assert.match(await passage.innerText(), /42 newton-metres/);
    console.log(`highlighted: ${JSON.stringify(await passage.locator('mark').allInnerTexts())}`);

    // Copy puts the answer on the clipboard.
    await answer.getByRole('button', { name: 'Copy answer' }).click();
    await answer.getByRole('button', { name: 'Copy answer' }).filter({ hasText: 'Copied' }).waitFor();
    assert.match(await page.evaluate(() => navigator.clipboard.readText()), /handbook\.pdf, page 2/);

    // The conversation survives a reload.
    const turns = await page.locator('.turn').count();
    await page.reload();
    await page.locator('.turn article.answer .answer-text').first().waitFor();
    assert.equal(await page.locator('.turn').count(), turns);
    assert.equal(await page.locator('.turn .answer-text').last().innerText(), text);
    assert.ok(await page.locator('.turn li.source .src-file', { hasText: 'handbook.pdf' }).count());

    // Search: raw results with scores, each mode.
    await tab(page, 'Search').click();
    await page.getByLabel('Query').fill('blade bolt torque newton-metres');
    for (const mode of ['keyword', 'vector', 'hybrid']) {
      await page.getByLabel('Mode').selectOption(mode);
      await page.getByRole('button', { name: 'Search' }).click();
      await page.locator('.results-count', { hasText: mode }).waitFor();
      const first = page.locator('li.hit').first();
      assert.match(await first.locator('.hit-source').innerText(), /handbook\.pdf · page 2/, mode);
      assert.match(await first.locator('.score').innerText(), /^score -?\d+\.\d{4}$/);
      assert.match(await first.locator('.hit-text').innerText(), /42 newton-metres/);
    }

    // Delete a document, after confirming.
    await tab(page, 'Documents').click();
    await docRow(page, 'guide.md').waitFor();
    await docRow(page, 'guide.md').getByRole('button', { name: /Delete/ }).click();
    await docRow(page, 'guide.md').getByRole('button', { name: 'Yes, delete' }).click();
    await docRow(page, 'guide.md').waitFor({ state: 'detached' });
    assert.equal(await docRow(page, 'handbook.pdf').count(), 1);

    assert.deepEqual(problems, []);
  });

  test('a two-turn conversation: the follow-up leans on the first question; feedback on an answer', { timeout: 600_000 }, async () => {
    await tab(page, 'Ask').click();
    await page.getByRole('button', { name: 'Clear conversation' }).click();
    const first = await askQuestion(page, 'How often is the main bearing greased?');
    const firstText = await first.answer.locator('.answer-text').innerText();
    console.log(`first answer: ${firstText}`);
    assert.match(firstText, /1,800/);

    const second = await askQuestion(page, 'what grease is used for it?');
    const secondText = await second.answer.locator('.answer-text').innerText();
    console.log(`follow-up answer: ${secondText} (${await second.answer.locator('.asked').innerText().catch(() => '')})`);
    assert.match(secondText, /Lumora LX-7/);
    assert.match(await second.answer.locator('.asked').innerText(), /Understood as: .*bearing/i);
    const card = second.answer.locator('li.source').filter({ has: page.locator('.src-file', { hasText: 'handbook.pdf' }) }).filter({ has: page.locator('.src-page', { hasText: 'page 3' }) });
    assert.equal(await card.count(), 1, 'a source card names handbook.pdf, page 3');

    // Thumbs down with a comment, stored by the server and exported by `kb feedback export`.
    await second.answer.getByRole('button', { name: 'Bad answer' }).click();
    await second.answer.getByLabel('Comment (optional)').fill('Name the grease first.');
    await second.answer.getByRole('button', { name: 'Send feedback' }).click();
    await second.answer.getByText('Thanks for the feedback.').waitFor();
    const exported = kb.cli('feedback', 'export');
    assert.equal(exported.status, 0, exported.stderr);
    const rows = exported.stdout.trim().split('\n').map((l) => JSON.parse(l));
    const row = rows.find((r) => r.comment === 'Name the grease first.');
    assert.ok(row, exported.stdout);
    assert.equal(row.rating, 'down');
    assert.equal(row.question, 'what grease is used for it?');
    assert.match(row.answer, /Lumora LX-7/);
    assert.ok(row.citations.some((c) => c.filename === 'handbook.pdf' && c.page === 3));
    assert.deepEqual(problems, []);
  });

  test('text from documents is shown as text and never runs', { timeout: 600_000 }, async () => {
    const p = await context.newPage();
    const seen = watch(p);
    await p.goto(kb.url + '/');
    await createCollection(p, 'hostile');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kb-e2e-xss-'));
    const name = 'zorblax<img src=x onerror=alert(3)>.txt';
    const file = path.join(dir, name);
    const img = '<img src=x onerror=alert(1)>';
    const script = '<script>alert(2)</script>';
    fs.writeFileSync(
      file,
      'Zorblax reactor calibration notes\n\n' +
        `The zorblax reactor calibration code is ${img} and the zorblax reactor launch phrase is ${script} as written in the zorblax reactor manual.\n\n` +
        'Every zorblax reactor calibration must be logged by the shift lead.\n',
    );
    await p.getByLabel('Choose files').setInputFiles(file);
    await waitForStatus(p, name, 'done');
    assert.equal(await docRow(p, name).locator('.doc-name').innerText(), name);

    const { answer } = await askQuestion(p, 'What is the zorblax reactor calibration code?');
    console.log(`hostile answer: ${await answer.locator('.answer-text').innerText()}`);
    const cards = answer.locator('li.source');
    assert.ok((await cards.count()) > 0, 'the answer cites the document');
    for (const summary of await cards.locator('summary').all()) await summary.click();
    const passages = (await cards.locator('.passage').allInnerTexts()).join('\n');
    assert.ok(passages.includes(img), passages);
    assert.ok(passages.includes(script), passages);
    assert.ok((await cards.locator('.src-file').allInnerTexts()).includes(name));

    await tab(p, 'Search').click();
    await p.getByLabel('Query').fill('zorblax reactor calibration code');
    await p.getByRole('button', { name: 'Search' }).click();
    await p.locator('li.hit').first().waitFor();
    const hitText = (await p.locator('.hit-text').allInnerTexts()).join('\n');
    assert.ok(hitText.includes(img) && hitText.includes(script), hitText);
    assert.equal(await p.locator('.hit-source').first().innerText(), name);

    // Nothing from the document became markup.
    assert.equal(await p.locator('#view img, #view script').count(), 0);
    await p.waitForTimeout(500);
    assert.deepEqual(seen, []);
    await p.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('screenshots of every view at desktop and phone width', { timeout: 300_000 }, async () => {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await page.goto(kb.url + '/#/');
    for (const [label, size] of [['desktop', DESKTOP], ['phone', PHONE]]) {
      await page.setViewportSize(size);
      const shot = (name, fullPage = true) => page.screenshot({ path: path.join(ARTIFACTS, `${name}-${label}.png`), fullPage });
      await tab(page, 'Collections').click();
      await page.locator('tr[data-collection="turbines"]').waitFor();
      await shot('collections');
      await page.getByLabel('Collection', { exact: true }).selectOption('turbines');
      await page.waitForURL(/#\/c\/turbines\/documents$/);
      await docRow(page, 'handbook.pdf').waitFor();
      if (label === 'desktop') {
        // An upload, so the upload list shows too (it stays while the page does).
        await page.getByLabel('Choose files').setInputFiles(path.join(FIXTURES, 'notes.txt'));
        await waitForStatus(page, 'notes.txt', 'done');
        await page.locator('li.upload[data-file="notes.txt"][data-phase="done"]').waitFor();
      }
      await shot('documents');
      await tab(page, 'Ask').click();
      const turn = page.locator('.turn').last();
      const card = turn.locator('li.source').first();
      await card.waitFor();
      if (!(await card.locator('details[open]').count())) await card.locator('summary').click();
      await turn.evaluate((el) => el.scrollIntoView({ block: 'start' }));
      await shot('ask', false); // the question box sticks to the bottom of the window
      await tab(page, 'Search').click();
      await page.locator('li.hit').first().waitFor();
      await shot('search');
    }
    assert.deepEqual(problems, []);
  });

  test('API keys: the key form, a refused key, a key with too few rights', { timeout: 120_000 }, async (t) => {
    const made = kb.cli('keys', 'create', 'ui-reader', '--read', 'turbines');
    if (made.status !== 0 && /unrecognized subcommand/.test(made.stderr)) {
      t.skip('this kb has no API keys');
      return;
    }
    assert.equal(made.status, 0, made.stderr);
    const key = made.stdout.trim();
    const ctx = await browser.newContext({ viewport: DESKTOP });
    const p = await ctx.newPage();
    const seen = watch(p);
    await p.goto(kb.url + '/');
    const form = p.locator('#auth');
    await form.getByText('requires an API key').waitFor();
    const input = p.getByRole('textbox', { name: 'API key' });
    await input.fill('kb_not_a_key');
    await p.getByRole('button', { name: 'Use key' }).click();
    await form.getByText('did not accept this API key').waitFor();
    await input.fill(key);
    await p.getByRole('button', { name: 'Use key' }).click();
    await form.waitFor({ state: 'hidden' });
    await p.locator('tr[data-collection="turbines"]').waitFor();

    // The key may read but not delete: a clear 403.
    await p.locator('tr[data-collection="turbines"] th a').click();
    await docRow(p, 'handbook.pdf').getByRole('button', { name: /Delete/ }).click();
    await docRow(p, 'handbook.pdf').getByRole('button', { name: 'Yes, delete' }).click();
    await p.locator('#notice', { hasText: 'not allowed' }).waitFor();
    assert.equal(await docRow(p, 'handbook.pdf').count(), 1);

    // Kept for the session: a reload needs no key.
    await p.reload();
    await docRow(p, 'handbook.pdf').waitFor();
    assert.ok(await form.isHidden());
    assert.equal(await p.evaluate(() => sessionStorage.getItem('kb.apiKey')), key);
    await p.getByRole('button', { name: 'API key' }).click();
    await p.getByRole('button', { name: 'Forget key' }).click();
    await form.getByText('requires an API key').waitFor();
    assert.deepEqual(seen, []);
    await ctx.close();
  });

  test('a server that is down gets a clear message', { timeout: 60_000 }, async () => {
    await page.setViewportSize(DESKTOP);
    await kb.stop();
    await tab(page, 'Search').click();
    await page.getByLabel('Query').fill('torque');
    await page.getByRole('button', { name: 'Search' }).click();
    await page.locator('#notice', { hasText: 'Cannot reach the kb server' }).waitFor();
  });
});
