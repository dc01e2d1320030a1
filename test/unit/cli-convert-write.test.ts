/**
 * qimg convert to qcow2 and QED against qemu-img convert 7.2: outputs pass
 * qemu-img check, compare identical with the source, and allocate what
 * qemu-img's outputs allocate (qemu-img map without host offsets).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { asQemu, qemuImg, qemuIo, qimg, requireTools, tmpDir } from '../helpers/tools.js';

const dir = tmpDir('qimg-convert-w-');
const opts = { cwd: dir };

const ok = (r: { status: number; stdout: string; stderr: string }, what: string): void => assert.equal(r.status, 0, `${what}: ${r.stdout}${r.stderr}`);

/** qemu-img map's JSON without host offsets, adjacent entries with the same flags merged. */
function layout(file: string): string {
  const r = qemuImg(['map', '--output=json', file], opts);
  ok(r, `map ${file}`);
  const entries = JSON.parse(r.stdout) as Array<{ start: number; length: number; depth: number; present: boolean; zero: boolean; data: boolean }>;
  const merged: typeof entries = [];
  for (const e of entries) {
    const last = merged[merged.length - 1];
    if (last && last.depth === e.depth && last.present === e.present && last.zero === e.zero && last.data === e.data) last.length += e.length;
    else merged.push({ start: e.start, length: e.length, depth: e.depth, present: e.present, zero: e.zero, data: e.data });
  }
  return JSON.stringify(merged);
}

let prepared = false;
function prepare(): void {
  if (prepared) return;
  prepared = true;
  ok(qemuImg(['create', '-q', '-f', 'qcow2', 'base.qcow2', '4M'], opts), 'base');
  ok(qemuIo(['-c', 'write -P 1 0 1M', '-c', 'write -P 2 2M 64k', 'base.qcow2'], opts), 'base io');
  ok(qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'top.qcow2'], opts), 'top');
  ok(qemuIo(['-c', 'write -P 3 512k 128k', '-c', 'write -z 2M 64k', '-c', 'write -P 0 3M 64k', '-c', 'write -P 4 3900k 5k', 'top.qcow2'], opts), 'top io');
  ok(qemuImg(['create', '-q', '-f', 'raw', 'zero.raw', '8M'], opts), 'zero');
  ok(qemuIo(['-f', 'raw', '-c', 'write -P 0 0 1M', 'zero.raw'], opts), 'zero io');
  ok(qemuImg(['create', '-q', '-f', 'raw', 'odd.raw', '1000k'], opts), 'odd');
  ok(qemuIo(['-f', 'raw', '-c', 'write -P 9 900k 100k', '-c', 'write -P 8 0 7k', 'odd.raw'], opts), 'odd io');
}

function convertCase(args: string[], src: string[], outFmt: string): void {
  const a = `q-${Math.random().toString(36).slice(2)}`;
  const b = `i-${Math.random().toString(36).slice(2)}`;
  const q = qemuImg(['convert', ...args, ...src, a], opts);
  const i = qimg(['convert', ...args, ...src, b], opts);
  ok(q, `qemu-img convert ${args.join(' ')}`);
  ok(i, `qimg convert ${args.join(' ')}`);
  const chk = qemuImg(['check', '-f', outFmt, b], opts);
  ok(chk, `check ${args.join(' ')}`);
  if (src.length === 1) ok(qemuImg(['compare', '-F', outFmt, src[0]!, b], opts), `compare ${args.join(' ')}`);
  ok(qemuImg(['compare', '-f', outFmt, '-F', outFmt, a, b], opts), `compare with qemu's output ${args.join(' ')}`);
  assert.equal(layout(b), layout(a), `allocation of ${args.join(' ')} ${src.join(' ')}`);
  if (args.includes('-c')) {
    const c = qemuImg(['check', '--output=json', b], opts);
    const ref = qemuImg(['check', '--output=json', a], opts);
    assert.equal((JSON.parse(c.stdout) as { 'compressed-clusters'?: number })['compressed-clusters'], (JSON.parse(ref.stdout) as { 'compressed-clusters'?: number })['compressed-clusters'], 'compressed clusters');
  }
}

test('convert to qcow2: plain, cluster sizes, extended L2, compressed zlib and zstd', (t) => {
  if (!requireTools(t)) return;
  prepare();
  for (const src of [['top.qcow2'], ['odd.raw'], ['odd.raw', 'top.qcow2']]) {
    convertCase(['-O', 'qcow2'], src, 'qcow2');
    convertCase(['-O', 'qcow2', '-c'], src, 'qcow2');
    convertCase(['-O', 'qcow2', '-c', '-o', 'compression_type=zstd'], src, 'qcow2');
    convertCase(['-O', 'qcow2', '-o', 'cluster_size=4k'], src, 'qcow2');
    convertCase(['-O', 'qcow2', '-c', '-o', 'cluster_size=2M'], src, 'qcow2');
    convertCase(['-O', 'qcow2', '-o', 'cluster_size=32k,extended_l2=on'], src, 'qcow2');
  }
  convertCase(['-O', 'qcow2', '-S', '0'], ['odd.raw'], 'qcow2');
  convertCase(['-O', 'qcow2', '-m', '1', '-W'], ['top.qcow2'], 'qcow2');
});

test('convert to QED', (t) => {
  if (!requireTools(t)) return;
  prepare();
  convertCase(['-O', 'qed'], ['top.qcow2'], 'qed');
  convertCase(['-O', 'qed', '-o', 'cluster_size=4k'], ['odd.raw', 'top.qcow2'], 'qed');
});

test('convert with a backing file for the output copies only the top layer', (t) => {
  if (!requireTools(t)) return;
  prepare();
  convertCase(['-O', 'qcow2', '-B', 'base.qcow2', '-F', 'qcow2'], ['top.qcow2'], 'qcow2');
  convertCase(['-O', 'qcow2', '-c', '-B', 'base.qcow2', '-F', 'qcow2'], ['top.qcow2'], 'qcow2');
  convertCase(['-O', 'qed', '-B', 'base.qcow2', '-F', 'qcow2'], ['top.qcow2'], 'qed');
});

test('zero input allocates no clusters', (t) => {
  if (!requireTools(t)) return;
  prepare();
  for (const args of [['-O', 'qcow2'], ['-O', 'qcow2', '-c'], ['-O', 'qed']]) {
    const out = `z-${Math.random().toString(36).slice(2)}`;
    ok(qimg(['convert', ...args, 'zero.raw', out], opts), 'convert zero');
    const m = JSON.parse(qemuImg(['map', '--output=json', out], opts).stdout) as Array<{ data: boolean; present: boolean }>;
    assert.ok(m.every((e) => !e.data && !e.present), `${args.join(' ')}: ${JSON.stringify(m)}`);
  }
});

test('convert -n writes into an existing qcow2 image', (t) => {
  if (!requireTools(t)) return;
  prepare();
  ok(qemuImg(['create', '-q', '-f', 'qcow2', 'n.qcow2', '4M'], opts), 'create');
  ok(qemuIo(['-c', 'write -P 7 0 4M', 'n.qcow2'], opts), 'fill');
  ok(qimg(['convert', '-n', '-O', 'qcow2', 'top.qcow2', 'n.qcow2'], opts), 'convert -n');
  ok(qemuImg(['compare', 'top.qcow2', 'n.qcow2'], opts), 'compare');
  ok(qemuImg(['check', 'n.qcow2'], opts), 'check');
});

test('convert option errors as qemu-img', (t) => {
  if (!requireTools(t)) return;
  prepare();
  const cases = [
    ['-O', 'qcow2', '-B', 'base.qcow2', 'top.qcow2', 'e1'],
    ['-O', 'qcow2', '-o', 'backing_file=base.qcow2', 'top.qcow2', 'e2'],
    ['-O', 'qed', '-c', 'top.qcow2', 'e3'],
    ['-O', 'raw', '-c', 'top.qcow2', 'e4'],
    ['-O', 'qcow2', '-c', '-o', 'preallocation=full', 'top.qcow2', 'e5'],
    ['-O', 'qcow2', '-o', 'cluster_size=3k', 'top.qcow2', 'e6'],
    ['-O', 'qcow2', '-o', 'foo=1', 'top.qcow2', 'e7'],
    ['-O', 'foo', 'top.qcow2', 'e8'],
    ['-O', 'qcow2', '-B', 'base.qcow2', '-F', 'qcow2', 'top.qcow2', 'odd.raw', 'e9'],
    ['-O', 'raw', '-B', 'base.qcow2', 'top.qcow2', 'e10'],
    ['-O', 'qcow2', '-o', 'help', 'top.qcow2', 'e11'],
    ['-O', 'qed', '-o', 'help'],
  ];
  for (const c of cases) {
    const q = qemuImg(['convert', ...c], opts);
    const i = qimg(['convert', ...c], opts);
    assert.equal(i.stdout, q.stdout, `stdout of ${c.join(' ')}`);
    assert.equal(asQemu(i.stderr), q.stderr, `stderr of ${c.join(' ')}`);
    assert.equal(i.status, q.status, `exit code of ${c.join(' ')}`);
  }
});
