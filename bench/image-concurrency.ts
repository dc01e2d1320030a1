/**
 * Concurrency check of one writable qcow2 Image, without NBD: 8 workers
 * issue random writes, write-zeroes (may unmap) and whole-cluster discards
 * on ranges that never overlap another request in flight; afterwards the
 * image must read back as the model of what was written.
 *
 *   node --import tsx bench/image-concurrency.ts [write,zero,trim] [seed]   (NO_UNMAP=1: zeroes without unmap)
 *
 * Exit 0 when the image matches, 1 (with the first differing offset) when not.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openImageFile } from '../src/node.js';

const kinds = (process.argv[2] ?? 'write,zero,trim').split(',');
let seed = Number(process.argv[3] ?? 12345) >>> 0 || 1;
const rand = (): number => {
  seed ^= seed << 13;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return (seed >>> 0) / 2 ** 32;
};

const SIZE = 32 << 20;
const CLUSTER = 65536;
const dir = mkdtempSync(join(tmpdir(), 'qimg-concurrency-'));
const path = join(dir, 'c.qcow2');
try {
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', path, String(SIZE)]);
  const img = await openImageFile(path, { writable: true });
  const model = Buffer.alloc(SIZE);
  const inflight: Array<[number, number]> = [];
  const busy = (a: number, b: number): boolean => inflight.some(([o, e]) => a < e && o < b);
  const worker = async (): Promise<void> => {
    for (let i = 0; i < 400; i++) {
      const kind = kinds[Math.floor(rand() * kinds.length)]!;
      const len = kind === 'trim' ? CLUSTER * (1 + Math.floor(rand() * 3)) : (1 + Math.floor(rand() * 16)) * 4096;
      const align = kind === 'trim' ? CLUSTER : 4096;
      let off: number;
      do off = Math.floor(rand() * ((SIZE - len) / align)) * align;
      while (busy(off, off + len));
      const entry: [number, number] = [off, off + len];
      inflight.push(entry);
      if (kind === 'write') {
        const data = Buffer.alloc(len, 1 + Math.floor(rand() * 254));
        model.set(data, off);
        await img.write(off, data);
      } else if (kind === 'zero') {
        model.fill(0, off, off + len);
        await img.writeZeroes(off, len, { mayUnmap: process.env.NO_UNMAP !== '1' });
      } else {
        model.fill(0, off, off + len);
        await img.discard(off, len);
      }
      inflight.splice(inflight.indexOf(entry), 1);
    }
  };
  await Promise.all(Array.from({ length: 8 }, worker));
  const back = Buffer.alloc(SIZE);
  await img.read(0, back);
  await img.close();
  let bad = -1;
  for (let i = 0; i < SIZE && bad < 0; i += 512) if (!back.subarray(i, i + 512).equals(model.subarray(i, i + 512))) bad = i;
  console.log(`${kinds.join(',')}: ${bad < 0 ? 'matches the model' : `differs from the model at ${bad}`}`);
  process.exitCode = bad < 0 ? 0 : 1;
} finally {
  rmSync(dir, { recursive: true, force: true });
}
