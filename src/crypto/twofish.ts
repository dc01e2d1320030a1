/**
 * Twofish (Schneier et al.), from the specification: the q permutations built
 * from their 4-bit tables, key-dependent S-boxes folded with the MDS matrix
 * into four 256-entry tables per key. Written here because no maintained JS
 * library offers Twofish; checked against published vectors and qemu.
 */
import { readLE32, writeLE32, type BlockCipher } from './block-cipher.js';

const Q_TABLES: readonly (readonly (readonly number[])[])[] = [
  [
    [8, 1, 7, 13, 6, 15, 3, 2, 0, 11, 5, 9, 14, 12, 10, 4],
    [14, 12, 11, 8, 1, 2, 3, 5, 15, 4, 10, 6, 7, 0, 9, 13],
    [11, 10, 5, 14, 6, 13, 9, 0, 12, 8, 15, 3, 2, 4, 7, 1],
    [13, 7, 15, 4, 1, 2, 6, 14, 9, 11, 3, 0, 8, 5, 12, 10],
  ],
  [
    [2, 8, 11, 13, 15, 7, 6, 14, 3, 1, 9, 4, 0, 10, 12, 5],
    [1, 14, 2, 11, 4, 12, 3, 7, 6, 13, 10, 5, 15, 9, 0, 8],
    [4, 12, 7, 5, 1, 6, 9, 10, 0, 14, 13, 8, 2, 11, 3, 15],
    [11, 9, 5, 1, 12, 3, 13, 14, 6, 4, 7, 15, 2, 0, 8, 10],
  ],
];

const ror4 = (x: number): number => ((x >>> 1) | (x << 3)) & 15;

function buildQ(t: readonly (readonly number[])[]): Uint8Array {
  const q = new Uint8Array(256);
  for (let x = 0; x < 256; x++) {
    let a = x >>> 4;
    let b = x & 15;
    for (let round = 0; round < 2; round++) {
      const a1 = a ^ b;
      const b1 = (a ^ ror4(b) ^ ((8 * a) & 15)) & 15;
      a = t[2 * round]![a1]!;
      b = t[2 * round + 1]![b1]!;
    }
    q[x] = (b << 4) | a;
  }
  return q;
}

const Q0 = buildQ(Q_TABLES[0]!);
const Q1 = buildQ(Q_TABLES[1]!);

function gfMul(a: number, b: number, poly: number): number {
  let r = 0;
  while (b) {
    if (b & 1) r ^= a;
    a <<= 1;
    if (a & 0x100) a ^= poly;
    b >>>= 1;
  }
  return r;
}

const MDS = [
  [0x01, 0xef, 0x5b, 0x5b],
  [0x5b, 0xef, 0xef, 0x01],
  [0xef, 0x5b, 0x01, 0xef],
  [0xef, 0x01, 0xef, 0x5b],
];
const RS = [
  [0x01, 0xa4, 0x55, 0x87, 0x5a, 0x58, 0xdb, 0x9e],
  [0xa4, 0x56, 0x82, 0xf3, 0x1e, 0xc6, 0x68, 0xe5],
  [0x02, 0xa1, 0xfc, 0xc1, 0x47, 0xae, 0x3d, 0x19],
  [0xa4, 0x55, 0x87, 0x5a, 0x58, 0xdb, 0x9e, 0x03],
];
const MDS_POLY = 0x169;
const RS_POLY = 0x14d;

/** MDS column `col` times byte y, as a little-endian word. */
function mdsColumn(col: number, y: number): number {
  let w = 0;
  for (let row = 0; row < 4; row++) w |= gfMul(MDS[row]![col]!, y, MDS_POLY) << (8 * row);
  return w >>> 0;
}

const byte = (w: number, i: number): number => (w >>> (8 * i)) & 0xff;

/** The q-box chain of h for byte position i, keyed with the words L (k of them). */
function hByte(i: number, x: number, L: readonly number[]): number {
  const k = L.length;
  let y = x;
  if (k === 4) y = [Q1, Q0, Q0, Q1][i]![y]! ^ byte(L[3]!, i);
  if (k >= 3) y = [Q1, Q1, Q0, Q0][i]![y]! ^ byte(L[2]!, i);
  const [a, b, c] = [
    [Q1, Q0, Q0],
    [Q0, Q0, Q1],
    [Q1, Q1, Q0],
    [Q0, Q1, Q1],
  ][i]!;
  return a![b![c![y]! ^ byte(L[1]!, i)]! ^ byte(L[0]!, i)]!;
}

function h(x: number, L: readonly number[]): number {
  let z = 0;
  for (let i = 0; i < 4; i++) z ^= mdsColumn(i, hByte(i, byte(x, i), L));
  return z >>> 0;
}

const rotl = (x: number, n: number): number => ((x << n) | (x >>> (32 - n))) >>> 0;
const rotr = (x: number, n: number): number => ((x >>> n) | (x << (32 - n))) >>> 0;

export function twofishBlockCipher(key: Uint8Array): BlockCipher {
  if (key.length !== 16 && key.length !== 24 && key.length !== 32) throw new RangeError(`Twofish key of ${key.length} bytes`);
  const k = key.length / 8;
  const me: number[] = [];
  const mo: number[] = [];
  const s: number[] = [];
  for (let i = 0; i < k; i++) {
    me.push(readLE32(key, 8 * i));
    mo.push(readLE32(key, 8 * i + 4));
    let w = 0;
    for (let row = 0; row < 4; row++) {
      let v = 0;
      for (let j = 0; j < 8; j++) v ^= gfMul(RS[row]![j]!, key[8 * i + j]!, RS_POLY);
      w |= v << (8 * row);
    }
    s.unshift(w >>> 0); // g uses (S_{k-1}, ..., S_0)
  }
  const K = new Uint32Array(40);
  const rho = 0x01010101;
  for (let i = 0; i < 20; i++) {
    const a = h(Math.imul(2 * i, rho) >>> 0, me);
    const b = rotl(h(Math.imul(2 * i + 1, rho) >>> 0, mo), 8);
    K[2 * i] = (a + b) >>> 0;
    K[2 * i + 1] = rotl((a + 2 * b) >>> 0, 9);
  }
  // g(X) = T0[x0] ^ T1[x1] ^ T2[x2] ^ T3[x3]: the key-dependent S-boxes and MDS, tabulated.
  const T = [0, 1, 2, 3].map((i) => {
    const t = new Uint32Array(256);
    for (let x = 0; x < 256; x++) t[x] = mdsColumn(i, hByte(i, x, s));
    return t;
  });
  const [T0, T1, T2, T3] = T as [Uint32Array, Uint32Array, Uint32Array, Uint32Array];
  const g = (x: number): number => (T0[x & 0xff]! ^ T1[(x >>> 8) & 0xff]! ^ T2[(x >>> 16) & 0xff]! ^ T3[x >>> 24]!) >>> 0;
  return {
    blockSize: 16,
    encryptBlock(buf, o) {
      let r0 = readLE32(buf, o) ^ K[0]!;
      let r1 = readLE32(buf, o + 4) ^ K[1]!;
      let r2 = readLE32(buf, o + 8) ^ K[2]!;
      let r3 = readLE32(buf, o + 12) ^ K[3]!;
      for (let r = 0; r < 16; r++) {
        const t0 = g(r0);
        const t1 = g(rotl(r1 >>> 0, 8));
        const f0 = (t0 + t1 + K[2 * r + 8]!) >>> 0;
        const f1 = (t0 + 2 * t1 + K[2 * r + 9]!) >>> 0;
        const n2 = rotr((r2 ^ f0) >>> 0, 1);
        const n3 = (rotl(r3 >>> 0, 1) ^ f1) >>> 0;
        [r0, r1, r2, r3] = [n2, n3, r0, r1];
      }
      writeLE32(buf, o, r2 ^ K[4]!);
      writeLE32(buf, o + 4, r3 ^ K[5]!);
      writeLE32(buf, o + 8, r0 ^ K[6]!);
      writeLE32(buf, o + 12, r1 ^ K[7]!);
    },
    decryptBlock(buf, o) {
      let r2 = readLE32(buf, o) ^ K[4]!;
      let r3 = readLE32(buf, o + 4) ^ K[5]!;
      let r0 = readLE32(buf, o + 8) ^ K[6]!;
      let r1 = readLE32(buf, o + 12) ^ K[7]!;
      for (let r = 15; r >= 0; r--) {
        // Undo the swap, then the round.
        const [n2, n3] = [r0, r1];
        [r0, r1] = [r2, r3];
        const t0 = g(r0 >>> 0);
        const t1 = g(rotl(r1 >>> 0, 8));
        const f0 = (t0 + t1 + K[2 * r + 8]!) >>> 0;
        const f1 = (t0 + 2 * t1 + K[2 * r + 9]!) >>> 0;
        r2 = (rotl(n2 >>> 0, 1) ^ f0) >>> 0;
        r3 = rotr((n3 ^ f1) >>> 0, 1);
      }
      writeLE32(buf, o, r0 ^ K[0]!);
      writeLE32(buf, o + 4, r1 ^ K[1]!);
      writeLE32(buf, o + 8, r2 ^ K[2]!);
      writeLE32(buf, o + 12, r3 ^ K[3]!);
    },
  };
}
