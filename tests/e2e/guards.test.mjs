// Security headers, no third-party requests, and the rate-limit notice.

import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { TEXT, expectShown, expectText, launchBrowser, norm, scenario, shown, textOf, waitFor } from './lib.mjs';

// A missing Chromium fails the whole file here, loudly (never a skip).
const browser = await launchBrowser();
after(async () => {
  await browser.close();
});

/** Directives of a Content-Security-Policy header: name → list of sources. */
function parseCsp(header) {
  const directives = new Map();
  for (const part of header.split(';')) {
    const [name, ...sources] = part.trim().split(/\s+/);
    if (name && !directives.has(name.toLowerCase())) directives.set(name.toLowerCase(), sources);
  }
  return directives;
}

describe('guards', { concurrency: 3 }, () => {
  test('GET / has a CSP without inline script, nosniff and a referrer policy', async () => {
    await scenario(browser, {}, async ({ server }) => {
      const res = await fetch(`${server.url}/`);
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type') || '', /^text\/html/);
      const csp = res.headers.get('content-security-policy');
      assert.ok(csp, 'GET / has a content-security-policy header');
      const directives = parseCsp(csp);
      const scriptSrc = directives.get('script-src') ?? directives.get('default-src');
      assert.ok(scriptSrc, `the CSP restricts scripts (script-src or default-src): ${csp}`);
      assert.ok(!scriptSrc.includes("'unsafe-inline'"), `script-src allows inline script: ${csp}`);
      assert.ok(!scriptSrc.includes('*'), `script-src allows any origin: ${csp}`);
      assert.equal(res.headers.get('x-content-type-options'), 'nosniff');
      assert.ok(res.headers.get('referrer-policy'), 'GET / has a referrer-policy header');
    });
  });

  test('the page makes no request to another origin and breaks none of its own CSP', async () => {
    await scenario(browser, {}, async ({ server, open }) => {
      const requests = [];
      const sockets = [];
      const cspViolations = [];
      const responses = [];
      const watch = (s) => {
        s.page.on('request', (r) => requests.push(r.url()));
        s.page.on('websocket', (ws) => sockets.push(ws.url()));
        s.page.on('response', (r) => responses.push(r));
        s.page.on('console', (m) => {
          if (/Content Security Policy/i.test(m.text())) cspViolations.push(`${s.name}: ${m.text()}`);
        });
      };
      const a = await open('A', {}, { beforeGoto: watch });
      const b = await open('B', {}, { beforeGoto: watch });

      await a.addInterest('privacy');
      await a.start();
      await a.waitStatus(TEXT.looking);
      await b.start();
      await Promise.all([a.waitStatus(TEXT.matched), b.waitStatus(TEXT.matched)]);
      await a.send('https://example.com/ and http://evil.invalid/x.png');
      await b.waitForStrangerMessage('https://example.com/ and http://evil.invalid/x.png');
      await b.messageBox.pressSequentially('ok', { delay: 30 });
      await b.button('Skip').click();
      await a.waitStatus(TEXT.disconnected);

      assert.ok(requests.length > 0, 'requests were recorded');
      const foreign = requests.filter((u) => !u.startsWith('data:') && !u.startsWith('blob:') && new URL(u).origin !== server.origin);
      assert.deepEqual(foreign, [], 'requests to another origin');
      assert.ok(sockets.length >= 2, `each page opened its WebSocket (saw ${JSON.stringify(sockets)})`);
      for (const u of sockets) {
        const url = new URL(u);
        assert.equal(url.host, `127.0.0.1:${server.port}`, `WebSocket to the same host and port: ${u}`);
        assert.equal(url.pathname, '/ws');
      }
      assert.deepEqual(cspViolations, [], 'the page breaks its own Content-Security-Policy');

      // Every file the page loads from the server says nosniff.
      const sniffable = responses
        .filter((r) => new URL(r.url()).origin === server.origin && r.status() === 200)
        .filter((r) => r.headers()['x-content-type-options'] !== 'nosniff')
        .map((r) => r.url());
      assert.deepEqual(sniffable, [], 'responses without x-content-type-options: nosniff');
    });
  });

  test('rate_limited shows the notice', async () => {
    await scenario(browser, { MSG_RATE: '1', MSG_BURST: '2' }, async ({ pair }) => {
      const [a] = await pair();
      for (let i = 1; i <= 4; i++) await a.send(`quick ${i}`);
      await expectText(a.notice, TEXT.tooFast, { what: "A's #notice" });
      await expectShown(a.notice, { what: "A's #notice" });
      assert.equal(await a.notice.getAttribute('role'), 'alert', '#notice has role="alert"');
      // Shown for about 4 s.
      await waitFor(async () => !(await shown(a.notice)) || norm(await textOf(a.notice)) === '', {
        timeout: 10_000,
        what: "A's #notice to go (hidden or emptied) after a while",
      });
    });
  });
});
