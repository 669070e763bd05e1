// pow.js — the proof of work of PROTOCOL.md ("Proof of work", alg "sha256-lzb"): find a string P
// of ASCII digits such that SHA-256(S ‖ P) begins with at least B zero bits. Pure: the hash comes
// in as a batch function, so the same solver runs in the Web Worker (pow-worker.js, WebCrypto or
// the pure-JS sha256.js), on the page as a fallback, and under Node's test runner.

export const ALG = 'sha256-lzb';
export const BATCH = 256; // hashes per await: WebCrypto's per-call cost is in the await, not the hash
export const MAX_POW_DIGITS = 20;

/** Number of leading zero bits of `bytes` (most significant bit of the first byte first). */
export function leadingZeroBits(bytes) {
  let n = 0;
  for (const b of bytes) {
    if (b === 0) {
      n += 8;
      continue;
    }
    return n + Math.clz32(b) - 24;
  }
  return n;
}

/** A `hello.challenge` this page can solve, as {salt, bits}, or null. */
export function parseChallenge(c) {
  if (!c || typeof c !== 'object' || c.alg !== ALG) return null;
  if (typeof c.salt !== 'string' || !/^[0-9a-f]{64}$/.test(c.salt)) return null;
  if (!Number.isInteger(c.bits) || c.bits < 0 || c.bits > 32) return null;
  return { salt: c.salt, bits: c.bits };
}

const encoder = new TextEncoder();

/** The ASCII bytes of S followed by the digits of P. */
export function powInput(salt, p) {
  return encoder.encode(salt + String(p));
}

/** True when `hash` (32 bytes of SHA-256(S ‖ P)) proves `bits` bits of work. */
export const meets = (hash, bits) => leadingZeroBits(hash) >= bits;

/** A batch hasher over WebCrypto: many digests per await (Promise.all), as Uint8Arrays. */
export function subtleHasher(subtle) {
  return async (inputs) => {
    const out = await Promise.all(inputs.map((b) => subtle.digest('SHA-256', b)));
    return out.map((buf) => new Uint8Array(buf));
  };
}

/** A batch hasher over a synchronous sha256(bytes) -> 32 bytes (the pure-JS fallback). */
export function syncHasher(sha256) {
  return (inputs) => inputs.map((b) => sha256(b));
}

/**
 * Tries P = from, from+1, … in batches of `batch` and returns the first P (a string of digits)
 * that solves (salt, bits), or null when `shouldStop()` said so. `hashBatch(inputs)` returns
 * (or resolves to) the SHA-256 of each input, in order. bits 0: "0" at once (but the page omits
 * `pow` then). It awaits each batch; a hasher that must leave room for other work (the page's
 * main-thread fallback) yields inside `hashBatch`.
 */
export async function solve(salt, bits, hashBatch, { from = 0, batch = BATCH, shouldStop = () => false } = {}) {
  if (bits <= 0) return String(from);
  for (let p = from; p < Number.MAX_SAFE_INTEGER; p += batch) {
    if (shouldStop()) return null;
    const inputs = [];
    for (let i = 0; i < batch; i++) inputs.push(powInput(salt, p + i));
    const hashes = await hashBatch(inputs);
    for (let i = 0; i < hashes.length; i++) {
      if (meets(hashes[i], bits)) return String(p + i);
    }
  }
  return null;
}
