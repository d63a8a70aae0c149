// Starts a real `kb serve` on an ephemeral port with a fresh data directory, and Debian's
// Chromium through playwright-core.

import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const FIXTURES = path.join(ROOT, 'fixtures');
export const ARTIFACTS = path.join(ROOT, 'tests/e2e/artifacts');

function kbBinary() {
  if (process.env.KB_BIN) return path.resolve(ROOT, process.env.KB_BIN);
  const release = path.join(ROOT, 'target/release/kb');
  return fs.existsSync(release) ? release : path.join(ROOT, 'target/debug/kb');
}

/**
 * A running `kb serve`: `{url, dataDir, log, stop()}`. `config` is written to the data
 * directory's kb.toml. The UI is served from the working tree's web/ (`--web-dir`) unless
 * KB_E2E_EMBEDDED=1 asks for the copy built into the binary.
 */
export async function startKb({ config = '', readyTimeoutMs = 180_000 } = {}) {
  const bin = kbBinary();
  if (!fs.existsSync(bin)) throw new Error(`no kb binary at ${bin}: build it or set KB_BIN`);
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kb-e2e-'));
  if (config) fs.writeFileSync(path.join(dataDir, 'kb.toml'), config);
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const logPath = path.join(ARTIFACTS, 'kb-server.log');
  const log = fs.createWriteStream(logPath);
  const common = ['--data-dir', dataDir, '--models-dir', process.env.KB_MODELS_DIR || path.join(ROOT, 'models')];
  const args = [...common, 'serve', '--addr', '127.0.0.1:0'];
  if (process.env.KB_E2E_EMBEDDED !== '1') args.push('--web-dir', path.join(ROOT, 'web'));
  const child = spawn(bin, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stderr.pipe(log);
  let exited = null;
  const exit = new Promise((resolve) => child.on('exit', (code, signal) => resolve((exited = { code, signal }))));

  const url = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`kb did not print its address; see ${logPath}`)), readyTimeoutMs);
    child.stdout.on('data', (d) => {
      log.write(d);
      out += d;
      const m = /kb listening on (http:\/\/\S+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m[1].replace(/\/$/, ''));
      }
    });
    exit.then((e) => {
      clearTimeout(timer);
      reject(new Error(`kb exited (${JSON.stringify(e)}) before listening; see ${logPath}`));
    });
  });
  const deadline = Date.now() + readyTimeoutMs;
  for (;;) {
    if (exited) throw new Error(`kb exited (${JSON.stringify(exited)}); see ${logPath}`);
    try {
      const res = await fetch(`${url}/readyz`);
      if (res.ok) break;
    } catch {
      // not accepting yet
    }
    if (Date.now() > deadline) throw new Error(`kb not ready after ${readyTimeoutMs} ms; see ${logPath}`);
    await new Promise((r) => setTimeout(r, 250));
  }

  return {
    url,
    dataDir,
    logPath,
    /** Runs another kb command on the same data directory: {status, stdout, stderr}. */
    cli(...more) {
      return spawnSync(bin, [...common, ...more], { cwd: ROOT, encoding: 'utf8', timeout: 120_000 });
    },
    async stop() {
      if (!exited) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await exit;
        clearTimeout(t);
      }
      log.end();
      fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

export function launchBrowser() {
  return chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium' });
}

/**
 * Watches a page for what must never happen: a dialog (script from a document ran), an
 * uncaught error, a Content-Security-Policy violation. `problems` lists them.
 */
export function watch(page) {
  const problems = [];
  page.on('dialog', (d) => {
    problems.push(`dialog opened: ${d.type()} ${JSON.stringify(d.message())}`);
    d.dismiss().catch(() => {});
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(m.text())) problems.push(`CSP: ${m.text()}`);
  });
  return problems;
}
