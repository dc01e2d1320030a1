/** qimg measure against qemu-img measure 7.2: output (human and JSON), errors, exit codes. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { asQemu, qemuImg, qemuIo, qimg, requireTools, tmpDir } from '../helpers/tools.js';

const dir = tmpDir('qimg-measure-');
const opts = { cwd: dir };

function same(args: string[]): void {
  const q = qemuImg(['measure', ...args], opts);
  const i = qimg(['measure', ...args], opts);
  assert.equal(i.stdout, q.stdout, `stdout of ${args.join(' ')}`);
  assert.equal(asQemu(i.stderr), q.stderr, `stderr of ${args.join(' ')}`);
  assert.equal(i.status, q.status, `exit code of ${args.join(' ')}`);
}

test('measure --size and source images as qemu-img', (t) => {
  if (!requireTools(t)) return;
  const sh = (r: { status: number; stderr: string }): void => assert.equal(r.status, 0, r.stderr);
  sh(qemuImg(['create', '-q', '-f', 'raw', 'r.raw', '10M'], opts));
  sh(qemuIo(['-f', 'raw', '-c', 'write -P 1 0 1M', '-c', 'write -P 2 5M 100k', 'r.raw'], opts));
  sh(qemuImg(['create', '-q', '-f', 'qcow2', 'holes.qcow2', '100M'], opts));
  sh(qemuIo(['-c', 'write -P 1 0 64k', '-c', 'write -z 1M 1M', '-c', 'write -P 3 50M 3k', 'holes.qcow2'], opts));
  sh(qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'holes.qcow2', '-F', 'qcow2', 'top.qcow2'], opts));
  sh(qemuIo(['-c', 'write -P 4 10M 1M', 'top.qcow2'], opts));
  for (const o of [[], ['--output=json']]) {
    for (const target of [['-O', 'qcow2'], ['-O', 'raw'], [], ['-O', 'qcow2', '-o', 'cluster_size=4k,extended_l2=on'], ['-O', 'qcow2', '-o', 'preallocation=full'], ['-O', 'qcow2', '-o', 'compat=0.10,refcount_bits=16']]) {
      same([...o, ...target, '--size', '1G']);
      for (const src of ['r.raw', 'holes.qcow2', 'top.qcow2']) same([...o, ...target, src]);
    }
    same([...o, '-O', 'qcow2', '-f', 'raw', 'r.raw']);
    same([...o, '-O', 'qcow2', '-o', 'nocow=on', '--size', '1G']);
  }
});

test('measure errors as qemu-img', (t) => {
  if (!requireTools(t)) return;
  for (const args of [
    [],
    ['--size', '1G', 'r.raw'],
    ['r.raw', 'holes.qcow2'],
    ['-f', 'raw', '--size', '1G'],
    ['-O', 'qed', '--size', '1G'],
    ['-O', 'foo', '--size', '1G'],
    ['-O', 'qcow2', '-o', 'foo=1', '--size', '1G'],
    ['--size', '1Q'],
    ['-O', 'qcow2', '-o', 'help'],
    ['-O', 'qcow2', 'nonexist'],
    ['-O', 'qcow2', '-o', 'cluster_size=3k', '--size', '1G'],
    ['--output=xml', '--size', '1G'],
  ]) same(args);
});
