// Safety on the page against the real server (PROTOCOL.md "Safety: reports, bans, proof of work",
// sections "Report", "Proof of work" and "Page"; docs/ui-contract.md "Safety"): the report flow
// seen from both sides, the pair block that follows it, the banned notice, and a page that
// solves its challenge before its find.
//
// Strikes and bans are about client addresses: every browser context sends its own address in
// the trusted proxy header (TRUST_PROXY_HEADER), as a proxy would.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { after, describe, test } from 'node:test';
import {
  TEXT,
  expectNotShown,
  expectShown,
  expectText,
  launchBrowser,
  norm,
  scenario,
  screenshot,
  shown,
  textOf,
  waitFor,
} from './lib.mjs';

const browser = await launchBrowser();
after(async () => {
  await browser.close();
});

const HEADER = 'x-test-client';
const PROXY = { TRUST_PROXY_HEADER: HEADER };
const THANKS = "Thanks for reporting. You won't meet this stranger again.";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Context options for a person whose address (as the proxy reports it) is `ip`. */
const from = (ip) => ({ extraHTTPHeaders: { [HEADER]: ip } });

/** Records every frame the page sends and receives (parsed), on `s.sent` and `s.received`. */
const watch = (s) => {
  s.sent = [];
  s.received = [];
  s.page.on('websocket', (ws) => {
    ws.on('framesent', (f) => s.sent.push(JSON.parse(String(f.payload))));
    ws.on('framereceived', (f) => s.received.push(JSON.parse(String(f.payload))));
  });
};

/** Opens `name` from address `ip`, its frames watched. */
const person = (open, name, ip, extra = {}) => open(name, { ...from(ip), ...extra }, { beforeGoto: watch });

async function matchTwo(a, b) {
  await a.start();
  await a.waitStatus(TEXT.looking);
  await b.start();
  await Promise.all([a.waitStatus(TEXT.matched), b.waitStatus(TEXT.matched)]);
}

const reportDialog = (s) => s.page.getByRole('dialog', { name: 'Report this stranger?', exact: true });
const radio = (s, name) => s.page.getByRole('radio', { name, exact: true });

/** Opens the Report dialog, picks `reason` (a radio's name, or null for the default), sends. */
async function sendReport(s, reason = null) {
  await expectShown(s.button('Report'), { what: `${s.name}'s Report button` });
  await s.button('Report').click();
  await expectShown(reportDialog(s), { what: `${s.name}'s report dialog` });
  assert.equal(await radio(s, 'Something else').isChecked(), true, '"Something else" is the default');
  if (reason) await radio(s, reason).check();
  await s.button('Send report').click();
}

const framesOf = (list, type) => list.filter((f) => f.type === type);

describe('report, ban and proof of work on the page', { concurrency: 2 }, () => {
  test('report while chatting: thanks for the reporter, only "disconnected" for the stranger, and they never meet again', async () => {
    await scenario(browser, PROXY, async ({ open }) => {
      const a = await person(open, 'A (reporter)', '10.20.0.1');
      const b = await person(open, 'B (reported)', '10.20.0.2');
      await matchTwo(a, b);
      await b.send('you are the worst');
      await a.waitForStrangerMessage('you are the worst');

      await sendReport(a, 'Harassment or hate');
      await a.waitStatus(THANKS);
      await expectShown(a.button('New stranger'), { what: "A's New stranger after the thank-you" });
      await expectNotShown(reportDialog(a), { what: 'the dialog after Send report' });
      await screenshot(a.page, 'report-thanks.png');
      const reports = framesOf(a.sent, 'report');
      assert.deepEqual(reports.map((f) => f.reason), ['harassment'], `report frames: ${JSON.stringify(reports)}`);
      await waitFor(() => framesOf(a.received, 'reported').length === 1, { what: 'A to receive reported once' });

      // The reported side learns only that the stranger left.
      await b.waitStatus(TEXT.disconnected);
      const left = framesOf(b.received, 'left');
      assert.deepEqual(left.map((f) => f.reason), ['skipped']);
      assert.ok(!/report/i.test(norm(await textOf(b.status))), 'B is not told of the report');
      assert.ok(!/report/i.test(norm(await textOf(b.notice)) || ''), 'B is not told of the report');
      assert.deepEqual(framesOf(b.received, 'reported'), []);

      // Both start again: the pair block keeps them apart.
      await a.button('New stranger').click();
      await a.waitStatus(TEXT.looking);
      await b.button('New stranger').click();
      await b.waitStatus(TEXT.looking);
      await sleep(1500);
      assert.equal(norm(await textOf(a.status)), TEXT.looking, 'A was paired with the stranger it reported');
      assert.equal(norm(await textOf(b.status)), TEXT.looking, 'B was paired with its reporter');
      // Anyone else meets the longest waiting (A).
      const c = await person(open, 'C', '10.20.0.3');
      await c.start();
      await Promise.all([c.waitStatus(TEXT.matched), a.waitStatus(TEXT.matched)]);
      assert.equal(norm(await textOf(b.status)), TEXT.looking);
    });
  });

  test('report after the stranger left, and after our own Skip; Cancel and Esc send nothing', async () => {
    await scenario(browser, { ...PROXY, REMATCH_COOLDOWN_SECS: '30' }, async ({ open }) => {
      const a = await person(open, 'A', '10.21.0.1');
      const b = await person(open, 'B', '10.21.0.2');
      await matchTwo(a, b);
      await b.send('buy my stuff at example dot com');
      await a.waitForStrangerMessage('buy my stuff at example dot com');
      await b.button('Skip').click();
      await a.waitStatus(TEXT.disconnected);

      // Cancel, then Esc: nothing sent, focus back on Report.
      await a.button('Report').click();
      await expectShown(reportDialog(a), { what: "A's report dialog" });
      await screenshot(a.page, 'report-dialog.png');
      await a.button('Cancel').click();
      await expectNotShown(reportDialog(a), { what: 'the dialog after Cancel' });
      await waitFor(() => a.button('Report').evaluate((el) => el === document.activeElement), {
        what: 'focus back on Report after Cancel',
      });
      await a.button('Report').click();
      await expectShown(reportDialog(a), { what: "A's report dialog again" });
      await a.page.keyboard.press('Escape');
      await expectNotShown(reportDialog(a), { what: 'the dialog after Esc' });
      await waitFor(() => a.button('Report').evaluate((el) => el === document.activeElement), {
        what: 'focus back on Report after Esc',
      });
      assert.deepEqual(framesOf(a.sent, 'report'), [], 'Cancel and Esc sent nothing');

      // In the grace window: the thank-you replaces "Stranger has disconnected."
      await sendReport(a, 'Spam or advertising');
      await a.waitStatus(THANKS);
      assert.deepEqual(framesOf(a.sent, 'report').map((f) => f.reason), ['spam']);
      await waitFor(() => framesOf(a.received, 'reported').length === 1, { what: 'A to receive reported' });
      await expectNotShown(a.button('Report'), { what: "A's Report button once the report is made" });

      // B, queued again after its own Skip, reports too (the default reason): the thank-you shows
      // in #notice and B stays in the queue.
      // (#status shows "You skipped." until the next match, docs/ui-contract.md.)
      const queued = await b.waitStatus([TEXT.skipped, TEXT.looking]);
      await sendReport(b);
      await expectText(b.notice, THANKS, { what: "B's #notice" });
      assert.equal(norm(await textOf(b.status)), queued, 'B is still queued, its status unchanged');
      const breports = framesOf(b.sent, 'report');
      assert.equal(breports.length, 1);
      assert.ok(breports[0].reason === undefined || breports[0].reason === 'other', JSON.stringify(breports));
      await waitFor(() => framesOf(b.received, 'reported').length === 1, { what: 'B to receive reported' });
      assert.deepEqual(framesOf(b.received, 'idle'), [], 'a report while queued leaves the queue place alone');
    });
  });

  test('banned: the plain-words notice with the minutes left, and New stranger', async () => {
    await scenario(browser, { ...PROXY, BAN_STRIKES: '1', BAN_SECS: '600' }, async ({ open }) => {
      const t = await person(open, 'T (banned)', '10.22.0.1');
      const r = await person(open, 'R (reporter)', '10.22.0.2');
      await matchTwo(t, r);
      await t.send('something nasty');
      await r.waitForStrangerMessage('something nasty');
      await sendReport(r, 'Harassment or hate');
      await r.waitStatus(THANKS);
      await t.waitStatus(TEXT.disconnected);

      await t.button('New stranger').click();
      await t.waitStatus('Several people reported chats from your network. You can chat again in 10 minutes.', 8000);
      await expectShown(t.button('New stranger'), { what: "T's New stranger with the banned notice" });
      await screenshot(t.page, 'banned.png');
      const banned = t.received.filter((f) => f.type === 'error' && f.code === 'banned');
      assert.ok(banned.length >= 1, `no banned error: ${JSON.stringify(t.received)}`);
      assert.ok(banned.every((f) => Number.isInteger(f.retry_after) && f.retry_after >= 590 && f.retry_after <= 600), JSON.stringify(banned));

      // The reporter's address is not banned.
      await r.button('New stranger').click();
      await r.waitStatus(TEXT.looking);
    });
  });

  test('banned with less than a minute left: "1 minute"', async () => {
    await scenario(browser, { ...PROXY, BAN_STRIKES: '1', BAN_SECS: '45' }, async ({ open }) => {
      const t = await person(open, 'T', '10.23.0.1');
      const r = await person(open, 'R', '10.23.0.2');
      await matchTwo(t, r);
      await t.send('hey');
      await r.waitForStrangerMessage('hey');
      await sendReport(r);
      await t.waitStatus(TEXT.disconnected);
      await t.button('New stranger').click();
      await t.waitStatus('Several people reported chats from your network. You can chat again in 1 minute.', 8000);
    });
  });

  test('proof of work: a page asked for POW_BASE_BITS solves the challenge before its find and is matched', async () => {
    const bits = 12;
    await scenario(
      browser,
      { ...PROXY, POW_FREE_CONNS_PER_MIN: '0', POW_BASE_BITS: String(bits), POW_MAX_BITS: '16' },
      async ({ open, server }) => {
        const a = await person(open, 'A', '10.24.0.1');
        const b = await person(open, 'B', '10.24.0.2');
        await matchTwo(a, b);
        for (const s of [a, b]) {
          const [hello] = framesOf(s.received, 'hello');
          assert.ok(hello && hello.features.includes('pow'), JSON.stringify(hello));
          assert.equal(hello.challenge.bits, bits, `every connection pays POW_BASE_BITS: ${JSON.stringify(hello)}`);
          const finds = framesOf(s.sent, 'find');
          assert.equal(finds.length, 1, `${s.name} sent one find: ${JSON.stringify(finds)}`);
          const { pow } = finds[0];
          assert.match(String(pow), /^\d{1,20}$/, `${s.name}'s find carries a pow: ${JSON.stringify(finds[0])}`);
          const hash = createHash('sha256').update(hello.challenge.salt + pow, 'ascii').digest();
          const zeros = hash.readUInt16BE(0) >>> (16 - bits);
          assert.equal(zeros, 0, `SHA-256(S ‖ ${pow}) = ${hash.toString('hex')} lacks ${bits} zero bits`);
          const refused = s.received.filter((f) => f.type === 'error');
          assert.deepEqual(refused, [], `${s.name} was refused`);
        }
        const metrics = await (await fetch(`${server.url}/metrics`)).text();
        assert.match(metrics, /^relay_pow_solved_total 2$/m, 'both admitted by a solution');
        await a.send('solved it');
        await b.waitForStrangerMessage('solved it');
        assert.equal(await shown(a.button('Report')), true, 'Report offered while chatting');
      },
    );
  });
});
