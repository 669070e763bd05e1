// Starts the release binary of stranger-relay for one test, on a free port of 127.0.0.1, and
// stops it afterwards. Every server started here is also killed when the test process exits,
// whatever the reason, so a failing test never leaves one behind.

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const BINARY =
  process.env.STRANGER_RELAY_BIN || path.join(REPO_ROOT, 'target', 'release', 'stranger-relay');

// What every test server gets unless the test says otherwise: connection limits out of the way
// (all the browsers connect from 127.0.0.1) and fast matching timers.
const DEFAULT_ENV = {
  HOST: '127.0.0.1',
  CONN_RATE_PER_MIN: '100000',
  CONN_BURST: '10000',
  MAX_CONNS_PER_IP: '10000',
  INTEREST_WAIT_SECS: '1',
  REMATCH_COOLDOWN_SECS: '1',
  SHUTDOWN_GRACE_SECS: '1',
  RUST_LOG: 'warn',
};

const running = new Set();
function killAll() {
  for (const child of running) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
}
process.on('exit', killAll);
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    killAll();
    process.exit(130);
  });
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Starts the server with the default test settings overridden by `env`, waits until `/healthz`
 * answers `ok`, and returns `{ url, port, origin, stop(), logTail() }`.
 */
export async function startServer(env = {}) {
  if (!existsSync(BINARY)) {
    throw new Error(
      `stranger-relay binary not found at ${BINARY}: build it first with \`cargo build --release\` ` +
        `in ${REPO_ROOT} (or set STRANGER_RELAY_BIN).`,
    );
  }
  let lastError;
  // A port found free can be taken by someone else before the server binds it: try again then.
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    try {
      return await launch(port, env);
    } catch (err) {
      lastError = err;
    }
  }
  throw lastError;
}

async function launch(port, env) {
  const child = spawn(BINARY, [], {
    // A clean environment: a setting exported in the caller's shell must not change the tests.
    env: { PATH: process.env.PATH, ...DEFAULT_ENV, ...env, PORT: String(port) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  let log = '';
  const keep = (chunk) => {
    log = (log + chunk.toString()).slice(-20000);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  let exited = null;
  const exitPromise = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      exited = { code, signal };
      running.delete(child);
      resolve(exited);
    });
    child.on('error', (err) => {
      exited = { error: err };
      running.delete(child);
      resolve(exited);
    });
  });

  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (exited) {
      throw new Error(
        `stranger-relay exited during start-up (${JSON.stringify(exited)}); its output:\n${log}`,
      );
    }
    try {
      const res = await fetch(`${url}/healthz`);
      const body = await res.text();
      if (res.status === 200 && body.trim() === 'ok') break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`stranger-relay did not answer ${url}/healthz within 10 s; its output:\n${log}`);
    }
    await sleep(50);
  }

  return {
    url,
    port,
    origin: url,
    logTail: () => log.slice(-4000),
    async stop() {
      if (exited) return exited;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
      const result = await exitPromise;
      clearTimeout(timer);
      return result;
    },
  };
}
