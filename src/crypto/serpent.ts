/**
 * Serpent (Anderson, Biham, Knudsen), in the bitslice form of the
 * specification: the block is four little-endian 32-bit words and each S-box
 * maps the four bits at one position of the four words. Written here because
 * no maintained JS library offers Serpent; checked against published vectors
 * and against volumes qemu writes.
 */
import { readLE32, writeLE32, type BlockCipher } from './block-cipher.js';

const SBOX: readonly (readonly number[])[] = [
  [3, 8, 15, 1, 10, 6, 5, 11, 14, 13, 4, 2, 7, 0, 9, 12],
  [15, 12, 2, 7, 9, 0, 5, 10, 1, 11, 14, 8, 6, 13, 3, 4],
  [8, 6, 7, 9, 3, 12, 10, 15, 13, 1, 14, 4, 0, 11, 5, 2],
  [0, 15, 11, 8, 12, 9, 6, 3, 13, 1, 2, 4, 10, 7, 5, 14],
  [1, 15, 8, 3, 12, 0, 11, 6, 2, 5, 4, 10, 9, 14, 7, 13],
  [15, 5, 2, 11, 4, 10, 9, 12, 0, 3, 14, 8, 13, 6, 7, 1],
  [7, 2, 12, 5, 8, 4, 6, 11, 14, 9, 1, 15, 13, 3, 10, 0],
  [1, 13, 15, 0, 14, 8, 2, 11, 7, 4, 12, 10, 9, 3, 5, 6],
];
const INVERSE: readonly (readonly number[])[] = SBOX.map((s) => {
  const inv = new Array<number>(16);
  s.forEach((v, i) => (inv[v] = i));
  return inv;
});

const PHI = 0x9e3779b9;
const rotl = (x: number, n: number): number => ((x << n) | (x >>> (32 - n))) >>> 0;
const rotr = (x: number, n: number): number => ((x >>> n) | (x << (32 - n))) >>> 0;

/**
 * The S-box applied to four adjacent bit positions at once: index = the four
 * words' nibbles at those positions (x0 lowest), value = the output nibbles
 * in the same arrangement. 64 Ki entries per box, built on first use.
 */
const WIDE = new Map<readonly number[], Uint16Array>();
function wideBox(box: readonly number[]): Uint16Array {
  let t = WIDE.get(box);
  if (t) return t;
  t = new Uint16Array(65536);
  for (let idx = 0; idx < 65536; idx++) {
    let out = 0;
    for (let p = 0; p < 4; p++) {
      const nibble = ((idx >>> p) & 1) | (((idx >>> (4 + p)) & 1) << 1) | (((idx >>> (8 + p)) & 1) << 2) | (((idx >>> (12 + p)) & 1) << 3);
      const v = box[nibble]!;
      out |= ((v & 1) << p) | (((v >>> 1) & 1) << (4 + p)) | (((v >>> 2) & 1) << (8 + p)) | (((v >>> 3) & 1) << (12 + p));
    }
    t[idx] = out;
  }
  WIDE.set(box, t);
  return t;
}

/** Apply a 4-bit S-box to every bit position of the words x[0..3] (x[0] holds the low bit). */
function sboxWords(box: readonly number[], x: Uint32Array): void {
  const t = wideBox(box);
  const x0 = x[0]!;
  const x1 = x[1]!;
  const x2 = x[2]!;
  const x3 = x[3]!;
  let y0 = 0;
  let y1 = 0;
  let y2 = 0;
  let y3 = 0;
  for (let j = 0; j < 32; j += 4) {
    const v = t[((x0 >>> j) & 15) | (((x1 >>> j) & 15) << 4) | (((x2 >>> j) & 15) << 8) | (((x3 >>> j) & 15) << 12)]!;
    y0 |= (v & 15) << j;
    y1 |= ((v >>> 4) & 15) << j;
    y2 |= ((v >>> 8) & 15) << j;
    y3 |= ((v >>> 12) & 15) << j;
  }
  x[0] = y0 >>> 0;
  x[1] = y1 >>> 0;
  x[2] = y2 >>> 0;
  x[3] = y3 >>> 0;
}

function linear(x: Uint32Array): void {
  let x0 = x[0]!;
  let x1 = x[1]!;
  let x2 = x[2]!;
  let x3 = x[3]!;
  x0 = rotl(x0, 13);
  x2 = rotl(x2, 3);
  x1 = (x1 ^ x0 ^ x2) >>> 0;
  x3 = (x3 ^ x2 ^ (x0 << 3)) >>> 0;
  x1 = rotl(x1, 1);
  x3 = rotl(x3, 7);
  x0 = (x0 ^ x1 ^ x3) >>> 0;
  x2 = (x2 ^ x3 ^ (x1 << 7)) >>> 0;
  x0 = rotl(x0, 5);
  x2 = rotl(x2, 22);
  x[0] = x0;
  x[1] = x1;
  x[2] = x2;
  x[3] = x3;
}

function inverseLinear(x: Uint32Array): void {
  let x0 = x[0]!;
  let x1 = x[1]!;
  let x2 = x[2]!;
  let x3 = x[3]!;
  x2 = rotr(x2, 22);
  x0 = rotr(x0, 5);
  x2 = (x2 ^ x3 ^ (x1 << 7)) >>> 0;
  x0 = (x0 ^ x1 ^ x3) >>> 0;
  x3 = rotr(x3, 7);
  x1 = rotr(x1, 1);
  x3 = (x3 ^ x2 ^ (x0 << 3)) >>> 0;
  x1 = (x1 ^ x0 ^ x2) >>> 0;
  x2 = rotr(x2, 3);
  x0 = rotr(x0, 13);
  x[0] = x0;
  x[1] = x1;
  x[2] = x2;
  x[3] = x3;
}

/** 33 round keys of 4 words: the key padded to 256 bits with a single 1 bit, expanded, then S-boxed. */
function expandKey(key: Uint8Array): Uint32Array[] {
  if (key.length !== 16 && key.length !== 24 && key.length !== 32) throw new RangeError(`Serpent key of ${key.length} bytes`);
  const padded = new Uint8Array(32);
  padded.set(key);
  if (key.length < 32) padded[key.length] = 1;
  const w = new Uint32Array(140);
  for (let i = 0; i < 8; i++) w[i] = readLE32(padded, i * 4);
  for (let i = 8; i < 140; i++) w[i] = rotl((w[i - 8]! ^ w[i - 5]! ^ w[i - 3]! ^ w[i - 1]! ^ PHI ^ (i - 8)) >>> 0, 11);
  const keys: Uint32Array[] = [];
  for (let r = 0; r < 33; r++) {
    const k = w.slice(8 + 4 * r, 12 + 4 * r);
    sboxWords(SBOX[(3 - r + 32) % 8]!, k);
    keys.push(k);
  }
  return keys;
}

function xorKey(x: Uint32Array, k: Uint32Array): void {
  for (let i = 0; i < 4; i++) x[i] = (x[i]! ^ k[i]!) >>> 0;
}

export function serpentBlockCipher(key: Uint8Array): BlockCipher {
  const keys = expandKey(key);
  const x = new Uint32Array(4);
  const load = (b: Uint8Array, o: number): void => {
    for (let i = 0; i < 4; i++) x[i] = readLE32(b, o + 4 * i);
  };
  const store = (b: Uint8Array, o: number): void => {
    for (let i = 0; i < 4; i++) writeLE32(b, o + 4 * i, x[i]!);
  };
  return {
    blockSize: 16,
    encryptBlock(b, o) {
      load(b, o);
      for (let r = 0; r < 32; r++) {
        xorKey(x, keys[r]!);
        sboxWords(SBOX[r % 8]!, x);
        if (r < 31) linear(x);
      }
      xorKey(x, keys[32]!);
      store(b, o);
    },
    decryptBlock(b, o) {
      load(b, o);
      xorKey(x, keys[32]!);
      for (let r = 31; r >= 0; r--) {
        if (r < 31) inverseLinear(x);
        sboxWords(INVERSE[r % 8]!, x);
        xorKey(x, keys[r]!);
      }
      store(b, o);
    },
  };
}
