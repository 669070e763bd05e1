// How long the page's proof-of-work worker takes to solve a challenge in a real browser (issue 12).
//
//   node benches/pow/solve.mjs [--solves10 N] [--solves16 N] [--bits B,B,...]
//
// Serves web/pow.js, web/pow-worker.js and web/sha256.js on a free port of 127.0.0.1 (a secure
// context, so the worker has WebCrypto, as on the https:// site), opens Debian's Chromium
// (/usr/bin/chromium, or CHROMIUM_PATH) through playwright-core from tests/e2e/node_modules (run
// `cd tests/e2e && npm ci` first), and solves many challenges with fresh random salts exactly as
// web/app.js does: a new module Worker per challenge, postMessage({salt, bits, from: 0}), the time
// until its answer (worker start-up included), then terminate(). Each solution is checked here
// with Node's own SHA-256. Prints the median, p90 and mean time per solve and the hashes tried.
//
// How many hashes a solve takes is random (geometric, mean 2^B, median about 0.69 × 2^B), so the
// median of many solves is the figure that says what a person waits; p90 says what one in ten
// waits.

import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const E2E = path.join(ROOT, 'tests', 'e2e');

function option(name, fallback) {
  const i = process.argv.indexOf(name);
  if (i < 0) return fallback;
  const v = process.argv[i + 1];
  if (v === undefined) throw new Error(`${name} needs a value`);
  return v;
}

const solves = {
  10: Number(option('--solves10', 200)),
  16: Number(option('--solves16', 60)),
};
const bitsList = option('--bits', '10,16')
  .split(',')
  .map(Number)
  .filter((b) => Number.isInteger(b) && b > 0 && b <= 24);
const WARM_UP = 5;

let chromium;
try {
  chromium = createRequire(path.join(E2E, 'package.json'))('playwright-core').chromium;
} catch {
  console.error('playwright-core is missing: run `cd tests/e2e && npm ci` first.');
  process.exit(2);
}
const executablePath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
if (!existsSync(executablePath)) {
  console.error(`Chromium not found at ${executablePath}: apt-get install -y chromium`);
  process.exit(2);
}

// ---- the page's files on loopback ----------------------------------------------------------

const FILES = ['pow.js', 'pow-worker.js', 'sha256.js'];
const PAGE = '<!doctype html><meta charset="utf-8"><title>pow bench</title><p>pow bench</p>';

const server = http.createServer((req, res) => {
  const name = req.url.split('?')[0].replace(/^\//, '');
  if (name === '') {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(PAGE);
  } else if (FILES.includes(name)) {
    res.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8', 'cache-control': 'no-cache' });
    res.end(readFileSync(path.join(ROOT, 'web', name)));
  } else {
    res.writeHead(404);
    res.end();
  }
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const base = `http://127.0.0.1:${server.address().port}`;

// ---- solving in the browser ----------------------------------------------------------------

function leadingZeroBits(buf) {
  let n = 0;
  for (const b of buf) {
    if (b === 0) {
      n += 8;
      continue;
    }
    return n + Math.clz32(b) - 24;
  }
  return n;
}

function quantile(sorted, q) {
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i];
}

const browser = await chromium.launch({
  executablePath,
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
});
const lines = [];
let failed = false;
try {
  const page = await browser.newPage();
  await page.goto(`${base}/`);
  const secure = await page.evaluate(() => Boolean(globalThis.isSecureContext && crypto.subtle));
  if (!secure) throw new Error('the page has no crypto.subtle: the worker would use its pure-JS hash');
  const version = browser.version();

  // One challenge after another, as the page solves them: a fresh worker each time.
  const solveMany = (salts, bits) =>
    page.evaluate(
      async ({ salts, bits }) => {
        const out = [];
        for (const salt of salts) {
          const t0 = performance.now();
          const worker = new Worker('/pow-worker.js', { type: 'module' });
          const answer = await new Promise((resolve, reject) => {
            worker.onmessage = (e) => resolve(e.data);
            worker.onerror = (e) => reject(new Error(e.message || 'worker error'));
            worker.postMessage({ salt, bits, from: 0 });
          });
          const ms = performance.now() - t0;
          worker.terminate();
          out.push({ salt: answer.salt, pow: answer.pow, ms });
        }
        return out;
      },
      { salts, bits },
    );

  const fresh = (n) => Array.from({ length: n }, () => randomBytes(32).toString('hex'));
  await solveMany(fresh(WARM_UP), 10); // the browser's JIT and worker machinery warmed up

  lines.push(`## proof of work in Chromium (the page's worker)`);
  lines.push('');
  lines.push(`- date: ${new Date().toISOString().slice(0, 10)}`);
  lines.push(`- command: \`node benches/pow/solve.mjs${process.argv.slice(2).map((a) => ` ${a}`).join('')}\``);
  lines.push(
    `- machine: nproc ${os.cpus().length}, ${os.cpus()[0]?.model ?? '?'}, load average ${os
      .loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')}`,
  );
  lines.push(`- browser: Chromium ${version} (headless, ${executablePath}), WebCrypto SHA-256, 256 hashes per await`);
  lines.push('');
  lines.push('| bits | solves | median, ms | p90, ms | mean, ms | hashes tried, median | hashes per second |');
  lines.push('|---:|---:|---:|---:|---:|---:|---:|');
  for (const bits of bitsList) {
    const n = solves[bits] ?? 50;
    const salts = fresh(n);
    const started = Date.now();
    const results = await solveMany(salts, bits);
    for (const [i, r] of results.entries()) {
      const hash = createHash('sha256').update(salts[i] + r.pow).digest();
      if (r.salt !== salts[i] || !/^[0-9]{1,20}$/.test(r.pow) || leadingZeroBits(hash) < bits) {
        throw new Error(`solve ${i} at ${bits} bits: ${JSON.stringify(r)} does not solve ${salts[i]}`);
      }
    }
    const ms = results.map((r) => r.ms).sort((a, b) => a - b);
    const hashes = results.map((r) => Number(r.pow) + 1).sort((a, b) => a - b);
    const totalHashes = hashes.reduce((a, b) => a + b, 0);
    const totalMs = ms.reduce((a, b) => a + b, 0);
    lines.push(
      `| ${bits} | ${n} | ${quantile(ms, 0.5).toFixed(0)} | ${quantile(ms, 0.9).toFixed(0)} | ` +
        `${(totalMs / n).toFixed(0)} | ${quantile(hashes, 0.5)} | ${Math.round((totalHashes / totalMs) * 1000)} |`,
    );
    console.error(`${bits} bits: ${n} solves in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  }
  lines.push('');
  lines.push(
    'Time per solve = from `new Worker` to its answer (worker start-up included), as the page ' +
      'does it; hashes tried = the solution + 1 (the worker tries 0, 1, 2, … in batches of 256). ' +
      'Every solution checked with Node\'s SHA-256.',
  );
} catch (e) {
  failed = true;
  console.error(`pow bench: ${e.message}`);
} finally {
  await browser.close();
  server.close();
}
const text = `${lines.join('\n')}\n`;
process.stdout.write(text);
if (!failed) {
  mkdirSync(path.join(ROOT, 'test-output'), { recursive: true });
  writeFileSync(path.join(ROOT, 'test-output', 'pow.md'), text);
}
process.exit(failed ? 1 : 0);
