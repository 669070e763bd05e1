// pow-worker.js — the Web Worker that solves the proof-of-work challenge off the page's thread.
// Receives {salt, bits, from}; posts back {salt, pow} (pow: the digits string) once solved.
// WebCrypto's SHA-256 batched many hashes per await; the pure-JS sha256.js where crypto.subtle
// is missing (not a secure context). One job per worker: the page terminates it when done or
// when the challenge is gone (the socket closed).

import { solve, subtleHasher, syncHasher } from './pow.js';
import { sha256 } from './sha256.js';

const subtle = globalThis.crypto?.subtle;

self.onmessage = async ({ data }) => {
  const { salt, bits, from = 0 } = data;
  let pow = null;
  if (subtle) {
    try {
      pow = await solve(salt, bits, subtleHasher(subtle), { from });
    } catch {
      pow = null; // WebCrypto refused (some browsers in odd contexts): the pure-JS hash below
    }
  }
  if (pow === null) pow = await solve(salt, bits, syncHasher(sha256), { from });
  self.postMessage({ salt, pow });
};
