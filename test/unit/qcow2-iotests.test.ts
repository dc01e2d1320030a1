/**
 * Our versions of two qemu iotest scenarios, judged by qemu itself:
 * 031 (unknown header extensions and autoclear bits across a header
 * rewrite) and 214 (a compressed cluster whose size field was corrupted).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { qimgCommand } from '../helpers/cli.js';
import { asQemu } from '../helpers/tools.js';

const haveQemu = spawnSync('qemu-img', ['--version']).status === 0;
if (!haveQemu && process.env.CI) throw new Error('qemu-img is required when CI is set');

const run = (cmd: string, args: string[]) => spawnSync(cmd, args, { encoding: 'utf8' });
const qimg = (args: string[]) => run(...qimgCommand(args));

test('031: an unknown header extension survives a header rewrite, unknown autoclear bits are cleared, as qemu does', { skip: !haveQemu }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'qimg-031-'));
  try {
    const ours = join(dir, 'ours.qcow2');
    const theirs = join(dir, 'theirs.qcow2');
    assert.equal(run('qemu-img', ['create', '-q', '-f', 'qcow2', ours, '1M']).status, 0);
    const img = readFileSync(ours);
    // Walk the extensions to the end marker and insert an unknown one there.
    let pos = img.readUInt32BE(100);
    while (img.readUInt32BE(pos) !== 0) pos += 8 + ((img.readUInt32BE(pos + 4) + 7) & ~7);
    const ext = Buffer.alloc(24);
    ext.writeUInt32BE(0x12345678, 0);
    ext.writeUInt32BE(11, 4);
    ext.write('hello world', 8);
    const head = Buffer.concat([img.subarray(0, pos), ext, img.subarray(pos, 65536 - 24)]);
    head.writeBigUInt64BE(head.readBigUInt64BE(88) | (1n << 5n), 88); // an autoclear bit nobody knows
    writeFileSync(ours, Buffer.concat([head, img.subarray(65536)]));
    copyFileSync(ours, theirs);
    assert.equal(qimg(['io', '-c', 'write -P 1 0 4k', ours]).status, 0);
    assert.equal(run('qemu-io', ['-c', 'write -P 1 0 4k', theirs]).status, 0);
    const a = readFileSync(ours).subarray(0, 65536);
    const b = readFileSync(theirs).subarray(0, 65536);
    assert.ok(a.includes(Buffer.from('hello world')), 'the unknown extension was dropped');
    assert.equal(a.readBigUInt64BE(88), 0n);
    assert.deepEqual(a, b, 'the rewritten header differs from qemu\'s');
    assert.equal(run('qemu-img', ['check', ours]).status, 0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('214: a compressed cluster with a corrupted size field reads and checks as in qemu, and -r all mends it', { skip: !haveQemu }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'qimg-214-'));
  try {
    const base = join(dir, 'base.qcow2');
    // Text with some noise: compresses to a few sectors, not one.
    const data = Buffer.alloc(1 << 20); // one cluster of text, then zeros
    let x = 12345;
    for (let i = 0; i < 65536; i++) {
      x = (x * 1103515245 + 12345) >>> 0;
      data[i] = i % 3 === 0 ? 97 + ((x >>> 16) % 26) : 32;
    }
    writeFileSync(join(dir, 'data.raw'), data);
    // Two compressed clusters, packed one after the other.
    assert.equal(run('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', join(dir, 'data.raw'), base]).status, 0);
    assert.equal(run('qemu-io', ['-c', 'write -c -P 7 64k 64k', base]).status, 0);
    const img = readFileSync(base);
    const l1 = Number(img.readBigUInt64BE(40));
    const l2 = Number(img.readBigUInt64BE(l1) & 0x00fffffffffffe00n);
    const entry = img.readBigUInt64BE(l2);
    const field = Number((entry >> 54n) & 0xffn);
    assert.ok(field >= 1, `the payload spans ${field + 1} sectors`);
    for (const [label, newField] of [['smaller', field - 1], ['bigger', field + 4]] as const) {
      const ours = join(dir, `ours-${label}.qcow2`);
      const theirs = join(dir, `theirs-${label}.qcow2`);
      const poked = Buffer.from(img);
      poked.writeBigUInt64BE((entry & ~(0xffn << 54n)) | (BigInt(newField) << 54n), l2);
      writeFileSync(ours, poked);
      writeFileSync(theirs, poked);
      // Reads: the same output, stderr and exit code (EIO when the payload is cut short; the data when it is longer).
      const qr = run('qemu-io', ['-c', 'read -q 0 64k', theirs]);
      const mr = qimg(['io', '-c', 'read -q 0 64k', ours]);
      assert.equal(mr.stdout, qr.stdout, label);
      assert.equal(asQemu(mr.stderr, 'qemu-io'), qr.stderr, label);
      assert.equal(mr.status, qr.status, label);
      // check, then -r all: the same JSON and exit code, before and after.
      for (const args of [['check', '--output=json'], ['check', '-r', 'all', '--output=json'], ['check', '--output=json']]) {
        const q = run('qemu-img', [...args, theirs]);
        const m = qimg([...args, ours]);
        assert.equal(m.status, q.status, `${label} ${args.join(' ')}: ${m.stdout}${m.stderr}`);
        // The two copies have different names: only the filename value differs, every other byte must not.
        assert.equal(m.stdout.replace(ours, 'IMG'), q.stdout.replace(theirs, 'IMG'), `${label} ${args.join(' ')}`);
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
