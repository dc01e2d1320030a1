/**
 * qimg create against qemu-img create 7.2: the same arguments in two
 * directories give the same output, errors, exit codes and images.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { asQemu, qemuImg, qimg, requireTools, tmpDir, type RunResult } from '../helpers/tools.js';
import { maskActualSize } from '../helpers/normalise.js';

const qdir = tmpDir('qimg-create-q-');
const idir = tmpDir('qimg-create-i-');

function both(args: string[]): { q: RunResult; i: RunResult } {
  return { q: qemuImg(args, { cwd: qdir }), i: qimg(args, { cwd: idir }) };
}

function same(args: string[]): void {
  const { q, i } = both(args);
  assert.equal(i.stdout, q.stdout, `stdout of ${args.join(' ')}`);
  assert.equal(asQemu(i.stderr), q.stderr, `stderr of ${args.join(' ')}`);
  assert.equal(i.status, q.status, `exit code of ${args.join(' ')}`);
}

/** qemu-img's info --output=json text, with the directory and the host's disk usage masked. */
function info(dir: string, file: string): string {
  const r = qemuImg(['info', '--output=json', file], { cwd: dir });
  assert.equal(r.status, 0, r.stderr);
  return maskActualSize(r.stdout.replaceAll(dir, 'DIR'));
}

test('create: messages, Formatting lines and exit codes as qemu-img', (t) => {
  if (!requireTools(t)) return;
  for (const d of [qdir, idir]) {
    assert.equal(qemuImg(['create', '-f', 'qcow2', 'base.qcow2', '1M'], { cwd: d }).status, 0);
    assert.equal(qemuImg(['create', '-f', 'raw', 'base.raw', '3M'], { cwd: d }).status, 0);
  }
  const cases: string[][] = [
    ['create'],
    ['create', 'x'],
    ['create', '-f', 'qcow2', 'x'],
    ['create', 'x', '1M', '2M'],
    ['create', 'x', '1Q'],
    ['create', 'x', '--', '-1'],
    ['create', '-f', 'foo', 'x', '1M'],
    ['create', '-f', 'raw', '-o', 'help'],
    ['create', '-f', 'qcow2', '-o', 'help'],
    ['create', '-f', 'qed', '-o', 'help'],
    ['create', '-f', 'raw', '-o', 'help', 'x'],
    ['create', '-f', 'qcow2', '-o', 'cluster_size=4k,help', 'x'],
    ['create', '-f', 'qed', '-o', '?', 'x'],
    ['create', 'r1.raw', '1M'],
    ['create', '-q', 'r2.raw', '1M'],
    ['create', '-f', 'raw', '-o', 'size=1000', 'r3.raw'],
    ['create', '-f', 'raw', '-o', 'preallocation=full', 'r4.raw', '100k'],
    ['create', '-f', 'raw', '-o', 'preallocation=bad', 'r5.raw', '1M'],
    ['create', '-f', 'raw', '-o', 'preallocation=metadata', 'r6.raw', '1M'],
    ['create', '-f', 'raw', '-o', 'extent_size_hint=4k,preallocation=off,nocow=off', 'r7.raw', '1M'],
    ['create', '-f', 'raw', '-o', 'foo=1', 'r8', '1M'],
    ['create', '-f', 'raw', '-o', 'size=1M', 'r9', '1M'],
    ['create', '-f', 'raw', '-b', 'base.raw', '-F', 'raw', 'r10'],
    ['create', '-f', 'qed', 'e1.qed', '1M'],
    ['create', '-f', 'qed', '-o', 'cluster_size=4k,table_size=2', 'e2.qed', '1M'],
    ['create', '-f', 'qed', '-o', 'extent_size_hint=4k,preallocation=off,nocow=off', 'e3.qed', '1M'],
    ['create', '-f', 'qed', '-o', 'cluster_size=3k', 'e4.qed', '1M'],
    ['create', '-f', 'qed', '-b', 'base.qcow2', 'e5.qed'],
    ['create', '-f', 'qed', '-b', 'base.qcow2', '-F', 'qcow2', 'e6.qed'],
    ['create', '-f', 'qcow2', 'q1.qcow2', '1M'],
    ['create', '-f', 'qcow2', '-o', 'cluster_size=4k', 'q2.qcow2', '1M'],
    ['create', '-f', 'qcow2', '-o', 'cluster_size=3k', 'q3.qcow2', '1M'],
    ['create', '-f', 'qcow2', '-o', 'cluster_size=abc', 'q4.qcow2', '1M'],
    ['create', '-f', 'qcow2', '-o', 'compat=0.9', 'q5.qcow2', '1M'],
    ['create', '-f', 'qcow2', '-o', 'lazy_refcounts=maybe', 'q6.qcow2', '1M'],
    ['create', '-f', 'qcow2', '-o', 'extent_size_hint=4k,preallocation=off,nocow=off', 'q7.qcow2', '1M'],
    ['create', '-f', 'qcow2', '-o', 'compat=0.10,refcount_bits=8', 'q8.qcow2', '1M'],
    ['create', '-f', 'qcow2', '-b', 'base.qcow2', 'q9.qcow2'],
    ['create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'q10.qcow2'],
    ['create', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', 'q11.qcow2', '5M'],
    ['create', '-f', 'qcow2', '-b', 'nonexist', '-F', 'qcow2', 'q12.qcow2', '1M'],
    ['create', '-f', 'qcow2', '-u', '-b', 'nonexist', '-F', 'qcow2', 'q13.qcow2'],
    ['create', '-f', 'qcow2', '-u', '-b', 'nonexist', '-F', 'qcow2', 'q14.qcow2', '1M'],
    ['create', '-f', 'qcow2', '-u', '-b', 'nonexist', 'q15.qcow2', '1M'],
    ['create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qed', 'q16.qcow2'],
    ['create', '-f', 'qcow2', '-F', 'qcow2', 'q17.qcow2', '1M'],
    ['create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'base.qcow2'],
    ['create', '-f', 'qcow2', '-b', '', '-F', 'qcow2', 'q18.qcow2', '1M'],
    ['create', '-f', 'qcow2', '-o', 'backing_file=base.qcow2,backing_fmt=qcow2', 'q19.qcow2'],
    ['create', '-f', 'qcow2', 'sub/q20.qcow2', '1M'],
  ];
  for (const c of cases) same(c);
});

test('created images match qemu-img created ones and pass check', (t) => {
  if (!requireTools(t)) return;
  for (const d of [qdir, idir]) assert.equal(qemuImg(['create', '-f', 'qcow2', 'b2.qcow2', '2M'], { cwd: d }).status, 0);
  const cases: Array<[string, string[]]> = [
    ['raw', ['-f', 'raw', 'i1.raw', '1M']],
    ['raw', ['-f', 'raw', '-o', 'preallocation=full', 'i2.raw', '64k']],
    ['qed', ['-f', 'qed', 'i3.qed', '10M']],
    ['qed', ['-f', 'qed', '-o', 'cluster_size=4k,table_size=2', 'i4.qed', '3M']],
    ['qed', ['-f', 'qed', '-b', 'b2.qcow2', '-F', 'qcow2', 'i5.qed']],
    ['qcow2', ['-f', 'qcow2', 'i6.qcow2', '1G']],
    ['qcow2', ['-f', 'qcow2', '-o', 'cluster_size=4k,refcount_bits=1', 'i7.qcow2', '100M']],
    ['qcow2', ['-f', 'qcow2', '-o', 'compat=0.10', 'i8.qcow2', '1M']],
    ['qcow2', ['-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=2M,lazy_refcounts=on', 'i9.qcow2', '1G']],
    ['qcow2', ['-f', 'qcow2', '-o', 'compression_type=zstd,refcount_bits=64', 'i10.qcow2', '5M']],
    ['qcow2', ['-f', 'qcow2', '-o', 'preallocation=metadata', 'i11.qcow2', '3M']],
    ['qcow2', ['-f', 'qcow2', '-b', 'b2.qcow2', '-F', 'qcow2', 'i12.qcow2']],
  ];
  for (const [fmt, args] of cases) {
    const file = args[args.length - 1]!.endsWith('M') || args[args.length - 1]!.endsWith('G') || args[args.length - 1]!.endsWith('k') ? args[args.length - 2]! : args[args.length - 1]!;
    same(['create', ...args]);
    assert.equal(info(idir, file), info(qdir, file), `info of ${args.join(' ')}`);
    if (fmt !== 'raw') {
      const c = qemuImg(['check', file], { cwd: idir });
      assert.equal(c.status, 0, `check of ${args.join(' ')}: ${c.stdout}${c.stderr}`);
    }
    assert.equal(qemuImg(['compare', join(qdir, file), join(idir, file)]).status, 0);
  }
});
