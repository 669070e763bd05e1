// Safety on the page that needs no server support (PROTOCOL.md "Page"): the 18+ notice that
// gates Start, the safety tips, the contact-detail warning, the proof-of-work worker under the
// page's CSP, and that a server announcing no features (POW_MAX_BITS=0, REPORTS=off) shows no
// Report button. Report, banned and pow against the real server: report.test.mjs.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { after, describe, test } from 'node:test';
import {
  ADULT_KEY,
  TEXT,
  expectNotShown,
  expectShown,
  expectText,
  horizontalOverflow,
  launchBrowser,
  norm,
  scenario,
  screenshot,
  shown,
  textOf,
  waitFor,
} from './lib.mjs';

// A missing Chromium fails the whole file here, loudly (never a skip).
const browser = await launchBrowser();
after(async () => {
  await browser.close();
});

const PHONE = { viewport: { width: 375, height: 740 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true };
const storage = (s) => s.page.evaluate(() => Object.fromEntries(Object.entries(localStorage)));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

describe('safety', { concurrency: 3 }, () => {
  test('18+ notice: Start is disabled until the box is ticked; the tick alone is remembered', async () => {
    await scenario(browser, {}, async ({ open }) => {
      const a = await open('A (first visit)', {}, { adult: false });
      await expectShown(a.adultBox, { what: 'the "I am 18 or older" checkbox' });
      assert.equal(await a.adultBox.isChecked(), false, 'not ticked on a first visit');
      assert.equal(await a.startButton.isDisabled(), true, 'Start chatting is disabled before the tick');
      for (const tip of TEXT.tips) {
        await expectShown(a.page.getByText(tip, { exact: true }), { what: `the tip ${JSON.stringify(tip)}` });
      }
      await expectShown(a.page.locator('#tip-report'), { what: 'the Report tip (the server offers report by default)' });
      const body = norm(await textOf(a.page.locator('body')));
      assert.ok(!/verif/i.test(body), `the page never calls the notice verification: ${body}`);
      assert.deepEqual(await storage(a), {}, 'nothing stored before the tick');

      // A click on the disabled Start does nothing.
      await a.startButton.click({ force: true });
      await expectShown(a.startButton, { what: 'Start chatting, still on the landing view' });

      await a.adultBox.check();
      await waitFor(async () => !(await a.startButton.isDisabled()), { what: 'Start chatting to be enabled after the tick' });
      assert.deepEqual(await storage(a), { [ADULT_KEY]: '1' }, 'the tick, under one key, and nothing else');

      // Remembered across a reload; unticking forgets it.
      await a.page.reload();
      await waitFor(() => a.adultBox.isChecked(), { what: 'the box to be ticked after a reload' });
      assert.equal(await a.startButton.isDisabled(), false);
      await a.adultBox.uncheck();
      await waitFor(() => a.startButton.isDisabled(), { what: 'Start chatting to be disabled after unticking' });
      assert.deepEqual(await storage(a), {}, 'unticking forgets the tick');

      // Keyboard: Space ticks, then Start chatting works.
      await a.adultBox.focus();
      await a.page.keyboard.press('Space');
      await waitFor(async () => !(await a.startButton.isDisabled()), { what: 'Start chatting enabled by Space' });
      await a.start();
      await a.waitStatus(TEXT.looking);
    });
  });

  test('landing with the notice and tips: screenshots, no overflow on a phone', async () => {
    await scenario(browser, {}, async ({ open }) => {
      const d = await open('desktop', { colorScheme: 'light', viewport: { width: 1200, height: 800 } }, { adult: false });
      await expectText(d.online, /^\d+ online$/, { what: '#online' });
      await screenshot(d.page, 'landing-gate.png');
      const m = await open('phone', { ...PHONE, colorScheme: 'dark' }, { adult: false });
      await expectText(m.online, /^\d+ online$/, { what: "the phone's #online" });
      assert.equal(await horizontalOverflow(m.page), null, 'landing view overflows on a phone');
      await m.adultBox.tap();
      await waitFor(async () => !(await m.startButton.isDisabled()), { what: "the phone's Start chatting to be enabled" });
      await screenshot(m.page, 'landing-gate-phone.png');
    });
  });

  test('contact details: a warning, nothing sent; Edit keeps the text; Send anyway sends it', async () => {
    await scenario(browser, {}, async ({ open }) => {
      const a = await open('A', { viewport: { width: 1200, height: 800 } });
      const sentFrames = [];
      a.page.on('websocket', (ws) => ws.on('framesent', (f) => sentFrames.push(String(f.payload))));
      await a.page.reload(); // so that the WebSocket opened on load is watched
      const b = await open('B');
      await a.start();
      await a.waitStatus(TEXT.looking);
      await b.start();
      await Promise.all([a.waitStatus(TEXT.matched), b.waitStatus(TEXT.matched)]);

      const contact = 'add me on snap: cool_guy99';
      await a.send(contact);
      await expectShown(a.contactWarning, { what: "A's contact-detail warning" });
      await expectText(a.page.locator('#contact-text'), TEXT.contactWarning, { what: '#contact-text' });
      await waitFor(() => a.button('Edit').evaluate((el) => el === document.activeElement), {
        what: 'focus on Edit when the warning shows',
      });
      assert.equal(await a.messageBox.inputValue(), contact, 'the text stays in the box');
      await sleep(400);
      assert.deepEqual(await b.strangerTexts(), [], 'nothing reached the stranger');
      assert.ok(!sentFrames.some((f) => f.includes('cool_guy99')), `the text left the page: ${sentFrames.join(' ')}`);
      assert.equal(await a.fromMe.count(), 0, 'not shown as sent');
      await screenshot(a.page, 'contact-warning.png');

      // Edit: back to the box, the text as it was.
      await a.button('Edit').click();
      await expectNotShown(a.contactWarning, { what: 'the warning after Edit' });
      await waitFor(() => a.messageBox.evaluate((el) => el === document.activeElement), { what: 'focus back in the Message box' });
      assert.equal(await a.messageBox.inputValue(), contact);

      // Ordinary numbers go straight through.
      await a.send("I'm 25 and I did a 2000 piece puzzle");
      await b.waitForStrangerMessage("I'm 25 and I did a 2000 piece puzzle");
      assert.equal(await shown(a.contactWarning), false, 'no warning for ordinary numbers');

      // Esc while the warning shows is Edit, and does not start a skip.
      await a.send('call me 555 123 4567');
      await expectShown(a.contactWarning, { what: 'the warning for a phone number' });
      await a.page.keyboard.press('Escape');
      await expectNotShown(a.contactWarning, { what: 'the warning after Esc' });
      assert.equal(norm(await textOf(a.hint)), '', 'Esc closed the warning and asked nothing about skipping');
      assert.equal(norm(await textOf(a.status)), TEXT.matched);

      // Send anyway: sent as typed.
      await a.messageBox.press('Enter');
      await expectShown(a.contactWarning, { what: 'the warning again' });
      await a.button('Send anyway').click();
      await b.waitForStrangerMessage('call me 555 123 4567');
      await expectNotShown(a.contactWarning, { what: 'the warning after Send anyway' });
      assert.equal(await a.messageBox.inputValue(), '', 'the box is emptied once sent');
      assert.equal(norm(await textOf(a.status)), TEXT.matched, 'still chatting');
    });
  });

  test('contact warning on a phone: fits, buttons reachable', async () => {
    await scenario(browser, {}, async ({ open }) => {
      const m = await open('phone', PHONE);
      const d = await open('desktop');
      await m.startButton.tap();
      await m.waitStatus(TEXT.looking);
      await d.start();
      await m.waitStatus(TEXT.matched);
      await d.send('hi! where are you from?');
      await m.waitForStrangerMessage('hi! where are you from?');
      await m.messageBox.tap();
      await m.send('text me at jane.doe@example.com');
      await expectShown(m.contactWarning, { what: "the phone's contact warning" });
      await expectShown(m.button('Send anyway'), { what: 'Send anyway on the phone' });
      await expectShown(m.button('Edit'), { what: 'Edit on the phone' });
      assert.equal(await horizontalOverflow(m.page), null, 'the warning overflows on a phone');
      await screenshot(m.page, 'contact-warning-phone.png');
      await m.button('Edit').tap();
      await expectNotShown(m.contactWarning, { what: "the phone's warning after Edit" });
    });
  });

  test('no features announced (a version 1 server): no Report button, find without pow', async () => {
    await scenario(browser, { POW_MAX_BITS: '0', REPORTS: 'off' }, async ({ open }) => {
      const frames = [];
      const watch = (s) => s.page.on('websocket', (ws) => ws.on('framesent', (f) => frames.push(String(f.payload))));
      const a = await open('A', {}, { beforeGoto: watch });
      await expectNotShown(a.page.locator('#tip-report'), { what: 'the Report tip without the report feature' });
      const b = await open('B');
      await a.start();
      await a.waitStatus(TEXT.looking);
      await b.start();
      await a.waitStatus(TEXT.matched);
      assert.equal(await shown(a.button('Report')), false, 'no Report without the feature');
      await b.button('Skip').click();
      await a.waitStatus(TEXT.disconnected);
      assert.equal(await shown(a.button('Report')), false, 'no Report after the partner left either');
      const finds = frames.map((f) => JSON.parse(f)).filter((f) => f.type === 'find');
      assert.deepEqual(finds, [{ type: 'find' }], 'find as in version 1');
    });
  });

  test('the proof-of-work worker solves the protocol vector in the browser, under the page\'s CSP', async () => {
    await scenario(browser, {}, async ({ open }) => {
      const csp = [];
      const a = await open('A', {}, {
        beforeGoto: (s) => s.page.on('console', (m) => { if (/Content Security Policy/i.test(m.text())) csp.push(m.text()); }),
      });
      const salt = '5f'.repeat(32);
      const answer = await a.page.evaluate(
        (job) => new Promise((resolve, reject) => {
          const w = new Worker(new URL('/pow-worker.js', location.href), { type: 'module' });
          w.onmessage = (e) => { w.terminate(); resolve(e.data); };
          w.onerror = (e) => reject(new Error(`worker error: ${e.message}`));
          w.postMessage(job);
          setTimeout(() => reject(new Error('worker timed out')), 8000);
        }),
        { salt, bits: 10, from: 0 },
      );
      assert.equal(answer.salt, salt);
      assert.match(answer.pow, /^\d{1,20}$/);
      const hash = createHash('sha256').update(salt + answer.pow, 'ascii').digest();
      assert.ok(hash[0] === 0 && hash[1] < 0x40, `SHA-256(S ‖ ${answer.pow}) = ${hash.toString('hex')} has 10 leading zero bits`);
      assert.ok(Number(answer.pow) <= 2609, '2609 solves it, so the first solution is no later');
      assert.deepEqual(csp, [], 'the worker breaks no CSP rule');
    });
  });
});
