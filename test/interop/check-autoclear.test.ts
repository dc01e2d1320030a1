/**
 * qemu-img check -r opens the image read-write, which clears autoclear bits
 * nobody maintains (iotest 036), even when there is nothing to repair; a
 * plain check leaves them.
 */
import assert from 'node:assert/strict';
import { openSync, readSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { asQemu, qemuImg, qimg, requireTools, tmpDir } from '../helpers/tools.js';

function autoclear(path: string): bigint {
  const fd = openSync(path, 'r');
  const b = Buffer.alloc(8);
  readSync(fd, b, 0, 8, 88);
  closeSync(fd);
  return b.readBigUInt64BE(0);
}

function setAutoclear(path: string, bits: bigint): void {
  const fd = openSync(path, 'r+');
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(bits, 0);
  writeSync(fd, b, 0, 8, 88);
  closeSync(fd);
}

for (const args of [['-r', 'all'], ['-r', 'leaks'], []]) {
  test(`check ${args.join(' ') || '(no repair)'}: unknown autoclear bit 63 as qemu-img leaves it`, (t) => {
    if (!requireTools(t)) return;
    const d = tmpDir();
    const results: Array<{ bits: bigint; out: string }> = [];
    for (const [name, run] of [['theirs', qemuImg], ['ours', qimg]] as const) {
      const img = join(d, `${name}.qcow2`);
      assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', img, '64M']).status, 0);
      setAutoclear(img, 1n << 63n);
      const r = run(['check', ...args, img]);
      results.push({ bits: autoclear(img), out: `${r.status}\n${asQemu(r.stdout)}${asQemu(r.stderr)}`.replaceAll(img, 'IMG') });
    }
    assert.equal(results[0]!.bits, args.length > 0 ? 0n : 1n << 63n, 'qemu-img as expected');
    assert.deepEqual(results[1], results[0]);
  });
}
