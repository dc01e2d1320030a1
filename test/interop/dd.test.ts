/**
 * qimg dd against qemu-img dd: the same operands on twin copies of images
 * qemu made give outputs with the same info, map (qcow2 outputs byte for
 * byte) and guest content, equal to the input range as raw; bad operands
 * print the same messages with the same exit codes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { qemuImg, requireTools } from '../helpers/tools.js';
import { assertSameImage, assertSameOutput, twinRun } from '../helpers/side-by-side.js';

const INPUTS = `
qemu-img create -q -f qcow2 in.qcow2 1M; qemu-io -c 'write -P 5 0 300k' -c 'write -c -P 6 512k 64k' -c 'write -z 640k 64k' in.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o compat=0.10 b.qcow2 1M; qemu-io -c 'write -P 1 0 1M' b.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o compat=0.10 -b b.qcow2 -F qcow2 v2.qcow2; qemu-io -c 'write -z 64k 64k' -c 'write -P 2 900k 4k' v2.qcow2 >/dev/null
qemu-img create -q -f qed in.qed 1M; qemu-io -c 'write -P 5 100k 300k' in.qed >/dev/null
for f in in.qcow2 v2.qcow2 in.qed; do qemu-img convert -O raw $f $f.raw; done
`;

const copies: Array<{ operands: string[]; input: string; output: string; bs: number; count?: number; skip?: number }> = [
  { operands: ['-O', 'qcow2'], input: 'in.qcow2', output: 'o.qcow2', bs: 512 },
  { operands: ['bs=4k', '-O', 'qcow2'], input: 'in.qcow2', output: 'o.qcow2', bs: 4096 },
  { operands: ['bs=1k', 'count=10', 'skip=2', '-O', 'qcow2'], input: 'in.qcow2', output: 'o.qcow2', bs: 1024, count: 10, skip: 2 },
  { operands: ['bs=3000', 'count=400'], input: 'in.qcow2', output: 'o.raw', bs: 3000, count: 400 },
  { operands: ['bs=3000', 'count=100', 'skip=7'], input: 'in.qcow2', output: 'o.raw', bs: 3000, count: 100, skip: 7 },
  { operands: ['bs=64k', 'skip=2', '-O', 'qed'], input: 'in.qcow2', output: 'o.qed', bs: 65536, skip: 2 },
  { operands: ['bs=64k', '-O', 'qcow2'], input: 'in.qed', output: 'o.qcow2', bs: 65536 },
  { operands: ['bs=1M', '-f', 'qcow2', '-O', 'qcow2'], input: 'v2.qcow2', output: 'o.qcow2', bs: 1 << 20 },
  { operands: ['count=1k', 'bs=256'], input: 'v2.qcow2', output: 'o.raw', bs: 256, count: 1024 },
  { operands: ['bs=1M', 'count=0', '-O', 'qcow2'], input: 'in.qcow2', output: 'o.qcow2', bs: 1 << 20, count: 0 },
  { operands: ['bs=1k', 'skip=5000'], input: 'in.qcow2', output: 'o.raw', bs: 1024, skip: 5000 },
];

for (const c of copies) {
  test(`dd ${c.operands.join(' ')} from ${c.input}`, (t) => {
    if (!requireTools(t)) return;
    const twins = twinRun(INPUTS, ['dd', ...c.operands, `if=${c.input}`, `of=${c.output}`]);
    assertSameOutput(twins);
    assert.equal(twins.oursRun.status, 0);
    assertSameImage(twins, c.output, { map: true });
    if (c.output.endsWith('.qcow2')) {
      // Written block by block in the same order: the same file.
      assert.ok(readFileSync(join(twins.ours, c.output)).equals(readFileSync(join(twins.qemu, c.output))), 'qcow2 output bytes');
    }
    // The output holds exactly the input range dd selects.
    const raw = readFileSync(join(twins.ours, `${c.input}.raw`));
    const end = c.count !== undefined && c.count <= Math.floor(raw.length / c.bs) ? c.count * c.bs : raw.length;
    const start = Math.min((c.skip ?? 0) * c.bs, end);
    const conv = qemuImg(['convert', '-O', 'raw', c.output, 'out.raw'], { cwd: twins.ours });
    assert.equal(conv.status, 0, conv.stderr);
    // (A size that is not a multiple of 512 is rounded up by the output format, as in qemu.)
    const got = readFileSync(join(twins.ours, 'out.raw'));
    assert.ok(got.length >= end - start && got.length < end - start + 512, `output size ${got.length}`);
    assert.ok(got.subarray(0, end - start).equals(raw.subarray(start, end)), 'output content');
    assert.ok(got.subarray(end - start).every((b) => b === 0), 'output tail');
  });
}

const failures: string[][] = [
  ['bs=x', 'if=in.qcow2', 'of=o1'],
  ['count=-1', 'if=in.qcow2', 'of=o1'],
  ['skip=abc', 'if=in.qcow2', 'of=o1'],
  ['bs=0', 'if=in.qcow2', 'of=o1'],
  ['bs=4G', 'if=in.qcow2', 'of=o1'],
  ['foo=1', 'if=in.qcow2', 'of=o1'],
  ['if=in.qcow2', 'of=o1', 'extra'],
  ['of=o1'],
  ['if=in.qcow2'],
  [],
  ['-O', 'foo', 'if=in.qcow2', 'of=o1'],
  ['if=nosuch', 'of=o1'],
  ['-f', 'qed', 'if=in.qcow2', 'of=o1'],
  ['if=', 'of=o1'],
  ['if=in.qcow2', 'of='],
  ['if=in.qcow2', 'of=/nonexistent-dir/x'],
  ['-p', 'if=in.qcow2', 'of=o1'],
];

for (const operands of failures) {
  test(`dd fails as qemu-img does: ${operands.join(' ') || '(no operands)'}`, (t) => {
    if (!requireTools(t)) return;
    const twins = twinRun(INPUTS, ['dd', ...operands]);
    assertSameOutput(twins);
    assert.notEqual(twins.oursRun.status, 0);
  });
}
