/**
 * LUKS1 anti-forensic split and merge: the master key is spread over 4000
 * stripes so that wiping any part of the key material destroys it. Each
 * stripe is folded in with XOR then "diffused" through the hash, block by
 * block, each block prefixed with its big-endian index.
 */
import { writeBE32 } from './block-cipher.js';
import { digestLength, type HashAlg } from './provider.js';

type Digest = (hash: HashAlg, data: Uint8Array) => Uint8Array;

function diffuse(hash: HashAlg, digest: Digest, buf: Uint8Array): void {
  const ds = digestLength(hash);
  const input = new Uint8Array(4 + ds);
  for (let i = 0, o = 0; o < buf.length; i++, o += ds) {
    const n = Math.min(ds, buf.length - o);
    writeBE32(input, 0, i);
    input.set(buf.subarray(o, o + n), 4);
    buf.set(digest(hash, input.subarray(0, 4 + n)).subarray(0, n), o);
  }
}

function xorInto(dst: Uint8Array, src: Uint8Array): void {
  for (let i = 0; i < dst.length; i++) dst[i]! ^= src[i]!;
}

/** `key.length * stripes` bytes of material from which afMerge recovers `key`. */
export function afSplit(hash: HashAlg, digest: Digest, key: Uint8Array, stripes: number, random: (n: number) => Uint8Array): Uint8Array {
  const n = key.length;
  const out = random(n * stripes);
  const d = new Uint8Array(n);
  for (let i = 0; i < stripes - 1; i++) {
    xorInto(d, out.subarray(i * n, (i + 1) * n));
    diffuse(hash, digest, d);
  }
  xorInto(d, key);
  out.set(d, (stripes - 1) * n);
  return out;
}

export function afMerge(hash: HashAlg, digest: Digest, material: Uint8Array, keyLength: number, stripes: number): Uint8Array {
  const d = new Uint8Array(keyLength);
  for (let i = 0; i < stripes - 1; i++) {
    xorInto(d, material.subarray(i * keyLength, (i + 1) * keyLength));
    diffuse(hash, digest, d);
  }
  xorInto(d, material.subarray((stripes - 1) * keyLength, stripes * keyLength));
  return d;
}
