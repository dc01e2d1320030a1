/**
 * Model-based: random sequences of write, write-zeroes, discard, compressed
 * write, flush and reopen against an in-memory byte array, on images made
 * by qemu-img with many option combinations. Afterwards the image reads as
 * the model says and `qemu-img check` calls it clean.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { openImageFile } from '../../src/node.js';

const haveQemu = spawnSync('qemu-img', ['--version']).status === 0;
if (!haveQemu && process.env.CI) throw new Error('qemu-img is required when CI is set');

interface Variant {
  name: string;
  opts: string;
  cluster: number;
  size: number;
  backing?: boolean;
  dataFile?: boolean;
  v2?: boolean;
  /** Every cluster has host data from the start: compressed writes are refused, as in qemu. */
  prealloc?: boolean;
}

const variants: Variant[] = [
  { name: '64K default', opts: '', cluster: 65536, size: 4 << 20 },
  { name: '512B clusters, 64-bit refcounts', opts: 'cluster_size=512,refcount_bits=64', cluster: 512, size: 1 << 20 },
  { name: '4K clusters, 1-bit refcounts', opts: 'cluster_size=4096,refcount_bits=1', cluster: 4096, size: 2 << 20 },
  { name: 'v2', opts: 'compat=0.10,cluster_size=4096', cluster: 4096, size: 1 << 20, v2: true },
  { name: 'v2 over backing', opts: 'compat=0.10,cluster_size=4096', cluster: 4096, size: 1 << 20, v2: true, backing: true },
  { name: 'lazy refcounts', opts: 'lazy_refcounts=on,cluster_size=4096', cluster: 4096, size: 1 << 20 },
  { name: 'extended L2 over backing', opts: 'extended_l2=on,cluster_size=32768', cluster: 32768, size: 2 << 20, backing: true },
  { name: 'extended L2', opts: 'extended_l2=on,cluster_size=65536', cluster: 65536, size: 2 << 20 },
  { name: 'zstd over backing', opts: 'compression_type=zstd,cluster_size=4096', cluster: 4096, size: 1 << 20, backing: true },
  { name: 'external data file', opts: 'cluster_size=4096', cluster: 4096, size: 1 << 20, dataFile: true },
  { name: 'odd size', opts: 'cluster_size=4096', cluster: 4096, size: (1 << 20) - 1536 },
  { name: 'preallocation=metadata', opts: 'cluster_size=4096,preallocation=metadata', cluster: 4096, size: 1 << 20, prealloc: true },
  { name: 'preallocation=full, extended L2', opts: 'cluster_size=16384,extended_l2=on,preallocation=full', cluster: 16384, size: 1 << 20, prealloc: true },
  { name: 'raw external data file', opts: 'cluster_size=4096,data_file_raw=on', cluster: 4096, size: 1 << 20, dataFile: true },
];

type Op =
  | { kind: 'write'; offset: number; length: number; seed: number }
  | { kind: 'zero'; offset: number; length: number; unmap: boolean }
  | { kind: 'discard'; offset: number; length: number }
  | { kind: 'compress'; cluster: number; seed: number }
  | { kind: 'parallel'; writes: Array<{ offset: number; length: number; seed: number }> }
  | { kind: 'flush' }
  | { kind: 'reopen' };

function pattern(length: number, seed: number): Uint8Array {
  const b = new Uint8Array(length);
  let x = seed | 1;
  for (let i = 0; i < length; i++) {
    // Runs of equal bytes and some text-like variation, so compression has something to do.
    if (i % 64 === 0) x = (x * 1103515245 + 12345) >>> 0;
    b[i] = (x >>> 16) & 0xff;
  }
  return b;
}

function opsFor(v: Variant): fc.Arbitrary<Op[]> {
  const range = fc
    .tuple(fc.integer({ min: 0, max: v.size - 1 }), fc.integer({ min: 1, max: Math.min(v.size, v.cluster * 3 + 700) }))
    .map(([o, l]) => ({ offset: o, length: Math.min(l, v.size - o) }));
  const op: fc.Arbitrary<Op> = fc.oneof(
    { weight: 5, arbitrary: fc.tuple(range, fc.nat()).map(([r, seed]) => ({ kind: 'write' as const, ...r, seed })) },
    { weight: 2, arbitrary: fc.tuple(range, fc.boolean()).map(([r, unmap]) => ({ kind: 'zero' as const, ...r, unmap })) },
    { weight: 1, arbitrary: range.map((r) => ({ kind: 'discard' as const, ...r })) },
    {
      weight: v.dataFile || v.prealloc ? 0 : 2,
      arbitrary: fc.tuple(fc.integer({ min: 0, max: Math.ceil(v.size / v.cluster) - 1 }), fc.nat()).map(([cluster, seed]) => ({ kind: 'compress' as const, cluster, seed })),
    },
    {
      weight: 1,
      arbitrary: fc
        .uniqueArray(fc.integer({ min: 0, max: Math.floor(v.size / v.cluster) - 1 }), { minLength: 2, maxLength: 6 })
        .chain((cl) => fc.tuple(...cl.map((c) => fc.tuple(fc.integer({ min: 0, max: v.cluster - 1 }), fc.nat()).map(([o, seed]) => ({ offset: c * v.cluster + o, length: Math.min(v.cluster - o, 1000), seed })))))
        .map((writes) => ({ kind: 'parallel' as const, writes })),
    },
    { weight: 1, arbitrary: fc.constant({ kind: 'flush' as const }) },
    { weight: 1, arbitrary: fc.constant({ kind: 'reopen' as const }) },
  );
  return fc.array(op, { minLength: 1, maxLength: 25 });
}

function qemu(args: string[]): { status: number | null; out: string } {
  const r = spawnSync('qemu-img', args, { encoding: 'utf8' });
  return { status: r.status, out: r.stdout + r.stderr };
}

for (const v of variants) {
  test(`qcow2 writes follow the model: ${v.name}`, { skip: !haveQemu }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'qimg-w-'));
    try {
      let run = 0;
      await fc.assert(
        fc.asyncProperty(opsFor(v), async (ops) => {
          const path = join(dir, `t${run}.qcow2`);
          const base = join(dir, `b${run}.raw`);
          run++;
          let model: Uint8Array = new Uint8Array(v.size);
          const args = ['create', '-q', '-f', 'qcow2'];
          let opts = v.opts;
          if (v.dataFile) opts = `${opts ? `${opts},` : ''}data_file=${path}.data`;
          if (opts) args.push('-o', opts);
          if (v.backing) {
            model = pattern(v.size, 4242);
            writeFileSync(base, model);
            args.push('-b', base, '-F', 'raw');
          }
          args.push(path, String(v.size));
          assert.equal(qemu(args).status, 0);
          const compressedTargets = new Set<number>();
          let img = await openImageFile(path, { writable: true });
          try {
            for (const op of ops) {
              switch (op.kind) {
                case 'write': {
                  const d = pattern(op.length, op.seed);
                  await img.write(op.offset, d);
                  model.set(d, op.offset);
                  for (let c = Math.floor(op.offset / v.cluster); c * v.cluster < op.offset + op.length; c++) compressedTargets.add(c);
                  break;
                }
                case 'parallel': {
                  await Promise.all(op.writes.map((w) => img.write(w.offset, pattern(w.length, w.seed))));
                  for (const w of op.writes) {
                    model.set(pattern(w.length, w.seed), w.offset);
                    compressedTargets.add(Math.floor(w.offset / v.cluster));
                  }
                  break;
                }
                case 'zero':
                  await img.writeZeroes(op.offset, op.length, { mayUnmap: op.unmap });
                  model.fill(0, op.offset, op.offset + op.length);
                  for (let c = Math.floor(op.offset / v.cluster); c * v.cluster < op.offset + op.length; c++) compressedTargets.add(c);
                  break;
                case 'discard': {
                  await img.discard(op.offset, op.length);
                  if (v.v2 && v.backing) break; // qemu ignores it
                  const end = op.offset + op.length;
                  const start = Math.ceil(op.offset / v.cluster) * v.cluster;
                  const stop = end === v.size ? end : Math.floor(end / v.cluster) * v.cluster;
                  if (stop > start) model.fill(0, start, stop);
                  break;
                }
                case 'compress': {
                  // Only into clusters that never held host data: qemu refuses the rest.
                  if (compressedTargets.has(op.cluster)) break;
                  compressedTargets.add(op.cluster);
                  const off = op.cluster * v.cluster;
                  const len = Math.min(v.cluster, v.size - off);
                  const d = pattern(len, op.seed);
                  await img.write(off, d, { compressed: true });
                  model.set(d, off);
                  break;
                }
                case 'flush':
                  await img.flush();
                  break;
                case 'reopen':
                  await img.close();
                  img = await openImageFile(path, { writable: true });
                  break;
              }
            }
          } finally {
            await img.close();
          }
          const check = qemu(['check', path]);
          assert.equal(check.status, 0, `qemu-img check: ${check.out}\nops: ${JSON.stringify(ops)}`);
          const raw = join(dir, 'out.raw');
          assert.equal(qemu(['convert', '-O', 'raw', path, raw]).status, 0);
          const got = new Uint8Array(readFileSync(raw));
          if (!Buffer.from(got).equals(Buffer.from(model))) {
            const at = got.findIndex((b, i) => b !== model[i]);
            assert.fail(`qemu reads differ from the model at ${at}\nops: ${JSON.stringify(ops)}`);
          }
          // And our own reader agrees.
          const back = await openImageFile(path);
          const mine = new Uint8Array(v.size);
          await back.read(0, mine);
          await back.close();
          assert.ok(Buffer.from(mine).equals(Buffer.from(model)), 'qimg reads differ from the model');
          rmSync(path, { force: true });
          rmSync(`${path}.data`, { force: true });
          rmSync(base, { force: true });
        }),
        { numRuns: Number(process.env.QIMG_PROPERTY_RUNS ?? 12), seed: Number(process.env.QIMG_SEED ?? 20261122) },
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}
