// Unit tests of web/pow.js and web/sha256.js: the protocol's test vector, the pure-JS SHA-256
// against node:crypto, and the solver's answers checked independently.
// Run: node --test tests/web-unit/

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes, webcrypto } from 'node:crypto';
import {
  leadingZeroBits, parseChallenge, powInput, solve, subtleHasher, syncHasher, meets,
} from '../../web/pow.js';
import { sha256, toHex } from '../../web/sha256.js';

const S = '5f'.repeat(32);
const nodeHash = (bytes) => createHash('sha256').update(bytes).digest();
const zeroBits = (buf) => {
  let n = 0;
  for (const b of buf) {
    for (let bit = 7; bit >= 0; bit--) {
      if (b & (1 << bit)) return n;
      n++;
    }
  }
  return n;
};

test('the protocol vector: S = 5f×32, B = 10: "2609" solves, "0" does not', () => {
  const good = nodeHash(Buffer.from(S + '2609', 'ascii'));
  assert.ok(good.toString('hex').startsWith('00311b26'));
  const bad = nodeHash(Buffer.from(S + '0', 'ascii'));
  assert.ok(bad.toString('hex').startsWith('e153b1b0'));
  // The pure-JS hash and the page's helpers agree.
  assert.ok(toHex(sha256(powInput(S, '2609'))).startsWith('00311b26'));
  assert.ok(toHex(sha256(powInput(S, 0))).startsWith('e153b1b0'));
  assert.equal(meets(sha256(powInput(S, '2609')), 10), true);
  assert.equal(meets(sha256(powInput(S, '0')), 10), false);
  assert.equal(leadingZeroBits(good), 10);
  assert.equal(leadingZeroBits(bad), 0);
});

test('leadingZeroBits counts from the most significant bit of the first byte', () => {
  assert.equal(leadingZeroBits(new Uint8Array([0x80])), 0);
  assert.equal(leadingZeroBits(new Uint8Array([0x01])), 7);
  assert.equal(leadingZeroBits(new Uint8Array([0x00, 0x40])), 9);
  assert.equal(leadingZeroBits(new Uint8Array([0x00, 0x00, 0x00, 0x00, 0x10])), 35);
  assert.equal(leadingZeroBits(new Uint8Array(32)), 256);
  for (let i = 0; i < 200; i++) {
    const b = randomBytes(4 + (i % 5));
    b[0] = i % 3 === 0 ? 0 : b[0];
    assert.equal(leadingZeroBits(b), zeroBits(b));
  }
});

test('the pure-JS SHA-256 matches node:crypto on many random inputs', () => {
  // Every length around the 55/56/64-byte padding edges, and random longer ones.
  const lengths = [];
  for (let n = 0; n <= 200; n++) lengths.push(n);
  for (let i = 0; i < 300; i++) lengths.push(Math.floor(Math.random() * 5000));
  for (const n of lengths) {
    const input = randomBytes(n);
    assert.equal(toHex(sha256(new Uint8Array(input))), nodeHash(input).toString('hex'), `length ${n}`);
  }
  assert.equal(toHex(sha256('')), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  assert.equal(toHex(sha256('abc')), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  assert.equal(toHex(sha256('héllo')), nodeHash(Buffer.from('héllo', 'utf8')).toString('hex'), 'strings as UTF-8');
});

test('solve finds the vector\'s first solution, with either hasher', async () => {
  const viaSubtle = await solve(S, 10, subtleHasher(webcrypto.subtle));
  const viaPure = await solve(S, 10, syncHasher(sha256));
  assert.equal(viaSubtle, viaPure);
  assert.match(viaSubtle, /^\d{1,20}$/);
  // Independently: node:crypto says it solves, and nothing smaller does.
  assert.ok(zeroBits(nodeHash(Buffer.from(S + viaSubtle, 'ascii'))) >= 10);
  for (let p = 0; p < Number(viaSubtle); p++) {
    assert.ok(zeroBits(nodeHash(Buffer.from(S + p, 'ascii'))) < 10, `${p} solves but was skipped`);
  }
  assert.ok(Number(viaSubtle) <= 2609, '2609 solves, so the first solution is at most 2609');
});

test('solve on random challenges: every answer checked with node:crypto; `from` moves on', async () => {
  for (let i = 0; i < 10; i++) {
    const salt = randomBytes(32).toString('hex');
    const bits = 1 + (i % 10);
    const p = await solve(salt, bits, subtleHasher(webcrypto.subtle), { batch: 64 });
    assert.ok(zeroBits(nodeHash(Buffer.from(salt + p, 'ascii'))) >= bits, `${salt} ${bits} ${p}`);
    const q = await solve(salt, bits, syncHasher(sha256), { from: Number(p) + 1, batch: 100 });
    assert.ok(Number(q) > Number(p), 'a retry from P+1 gives another solution');
    assert.ok(zeroBits(nodeHash(Buffer.from(salt + q, 'ascii'))) >= bits);
  }
});

test('solve stops when asked, and bits 0 needs no work', async () => {
  let calls = 0;
  const hasher = (inputs) => { calls++; return inputs.map(() => new Uint8Array(32).fill(255)); };
  const r = await solve(S, 8, hasher, { shouldStop: () => calls >= 3 });
  assert.equal(r, null);
  assert.equal(calls, 3);
  assert.equal(await solve(S, 0, () => assert.fail('no hashing at 0 bits')), '0');
});

test('parseChallenge takes only a well-formed sha256-lzb challenge', () => {
  assert.deepEqual(parseChallenge({ alg: 'sha256-lzb', salt: S, bits: 10 }), { salt: S, bits: 10 });
  assert.deepEqual(parseChallenge({ alg: 'sha256-lzb', salt: S, bits: 0 }), { salt: S, bits: 0 });
  for (const bad of [
    null, undefined, 5, 'x', {},
    { alg: 'md5', salt: S, bits: 10 },
    { alg: 'sha256-lzb', salt: S.toUpperCase(), bits: 10 },
    { alg: 'sha256-lzb', salt: S.slice(2), bits: 10 },
    { alg: 'sha256-lzb', salt: S, bits: 33 },
    { alg: 'sha256-lzb', salt: S, bits: -1 },
    { alg: 'sha256-lzb', salt: S, bits: 1.5 },
    { alg: 'sha256-lzb', salt: S, bits: '10' },
  ]) {
    assert.equal(parseChallenge(bad), null, JSON.stringify(bad));
  }
});
