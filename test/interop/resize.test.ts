/**
 * qimg resize and `qimg io -c truncate` against qemu-img resize and qemu-io
 * truncate: the same image is made once, copied, resized by both tools, and
 * the results compared. Output, stderr and exit code must be qemu's; a
 * successful resize must give the same `qemu-img info --output=json`
 * (actual-size masked: host allocation), identical guest contents
 * (`qemu-img compare`), and an image `qemu-img check` finds clean.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { asQemu, qemuImg, qemuIo, qimg, requireTools, tmpDir, type RunResult } from '../helpers/tools.js';
import { maskActualSize } from '../helpers/normalise.js';

interface Case {
  name: string;
  /** Commands that build the image `img` (and its backing or data files) in the working directory. */
  setup: Array<['img' | 'io', string[]]>;
  /** qemu-img resize arguments (the image is `img`). */
  resize: string[];
  /** The image's format, for check and compare. */
  format: 'qcow2' | 'qed' | 'raw';
}

const create = (fmt: string, opts: string, size: string, name = 'img'): ['img', string[]] => [
  'img',
  opts ? ['create', '-q', '-f', fmt, '-o', opts, name, size] : ['create', '-q', '-f', fmt, name, size],
];
const io = (fmt: string, cmd: string, name = 'img'): ['io', string[]] => ['io', ['-f', fmt, '-c', cmd, name]];

const cases: Case[] = [
  { name: 'qcow2 v3 grow, data near the end', format: 'qcow2', setup: [create('qcow2', '', '1M'), io('qcow2', 'write -P 5 960K 64K')], resize: ['img', '+1M'] },
  { name: 'qcow2 v2 grow', format: 'qcow2', setup: [create('qcow2', 'compat=0.10', '1M'), io('qcow2', 'write -P 5 0 64K')], resize: ['img', '5M'] },
  {
    name: 'qcow2 512 B clusters: the L1 table outgrows its cluster and moves',
    format: 'qcow2',
    setup: [create('qcow2', 'cluster_size=512', '1M'), io('qcow2', 'write -P 7 1000K 24K')],
    resize: ['img', '64M'],
  },
  {
    name: 'qcow2 2 MiB clusters, extended L2: grow then data survives',
    format: 'qcow2',
    setup: [create('qcow2', 'cluster_size=2M,extended_l2=on', '4M'), io('qcow2', 'write -P 9 3M 100K')],
    resize: ['img', '1G'],
  },
  {
    name: 'qcow2 extended L2 64 KiB shrink through data',
    format: 'qcow2',
    setup: [create('qcow2', 'extended_l2=on', '4M'), io('qcow2', 'write -P 9 1M 3M')],
    resize: ['--shrink', 'img', '2M'],
  },
  {
    name: 'qcow2 shrink to an unaligned size, data past it dropped',
    format: 'qcow2',
    setup: [create('qcow2', '', '4M'), io('qcow2', 'write -P 3 0 4M')],
    resize: ['--shrink', 'img', '1000448'],
  },
  {
    name: 'qcow2 v2 shrink with compressed and zero clusters',
    format: 'qcow2',
    setup: [create('qcow2', 'compat=0.10', '4M'), io('qcow2', 'write -c -P 3 2M 64K'), io('qcow2', 'write -P 4 3M 128K')],
    resize: ['--shrink', 'img', '-2M'],
  },
  {
    name: 'qcow2 1T to 100T (the L1 moves), data near the old end',
    format: 'qcow2',
    setup: [create('qcow2', '', '1T'), io('qcow2', 'write -P 1 1023G 1M')],
    resize: ['img', '100T'],
  },
  {
    name: 'qcow2 over a longer backing file: the new area reads as zero',
    format: 'qcow2',
    setup: [create('raw', '', '4M', 'base.raw'), io('raw', 'write -P 7 0 4M', 'base.raw'), ['img', ['create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', 'img', '1000448']]],
    resize: ['img', '3M'],
  },
  {
    name: 'qcow2 extended L2 over a longer qcow2 backing file',
    format: 'qcow2',
    setup: [create('qcow2', '', '8M', 'base.qcow2'), io('qcow2', 'write -P 7 0 8M', 'base.qcow2'), ['img', ['create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on', '-b', 'base.qcow2', '-F', 'qcow2', 'img', '1M']], io('qcow2', 'write -P 1 1000K 8K')],
    resize: ['img', '6M'],
  },
  {
    name: 'qcow2 over a shorter backing file: nothing to hide',
    format: 'qcow2',
    setup: [create('raw', '', '1M', 'base.raw'), io('raw', 'write -P 7 0 1M', 'base.raw'), ['img', ['create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', 'img', '2M']]],
    resize: ['img', '4M'],
  },
  { name: 'qcow2 1M to 2T (the L1 grows in place)', format: 'qcow2', setup: [create('qcow2', '', '1M'), io('qcow2', 'write -P 1 960K 64K')], resize: ['img', '2T'] },
  {
    name: 'qcow2 v2 over a longer backing file: refused',
    format: 'qcow2',
    setup: [create('raw', '', '4M', 'base.raw'), ['img', ['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', '-b', 'base.raw', '-F', 'raw', 'img', '1M']]],
    resize: ['img', '3M'],
  },
  {
    name: 'qcow2 with an external data file: grow',
    format: 'qcow2',
    setup: [create('qcow2', 'data_file=img.data', '4M'), io('qcow2', 'write -P 2 3M 1M')],
    resize: ['img', '8M'],
  },
  {
    name: 'qcow2 with an external data file: shrink',
    format: 'qcow2',
    setup: [create('qcow2', 'data_file=img.data', '4M'), io('qcow2', 'write -P 2 1M 3M')],
    resize: ['--shrink', 'img', '2M'],
  },
  {
    name: 'qcow2 v3 with a snapshot: shrink, the snapshot keeps its data',
    format: 'qcow2',
    setup: [create('qcow2', '', '4M'), io('qcow2', 'write -P 2 3M 1M'), ['img', ['snapshot', '-c', 'snap', 'img']]],
    resize: ['--shrink', 'img', '1M'],
  },
  { name: 'qcow2 v2 with a snapshot: refused', format: 'qcow2', setup: [create('qcow2', 'compat=0.10', '1M'), ['img', ['snapshot', '-c', 'snap', 'img']]], resize: ['img', '2M'] },
  ...(['metadata', 'falloc', 'full'] as const).map(
    (p): Case => ({ name: `qcow2 --preallocation=${p}`, format: 'qcow2', setup: [create('qcow2', '', '1M'), io('qcow2', 'write -P 1 0 512K')], resize: [`--preallocation=${p}`, 'img', '3M'] }),
  ),
  { name: 'qcow2 --preallocation=full with a data file', format: 'qcow2', setup: [create('qcow2', 'data_file=img.data', '1M')], resize: ['--preallocation=full', 'img', '2M'] },
  { name: 'qcow2 -q, +0', format: 'qcow2', setup: [create('qcow2', '', '1M')], resize: ['-q', 'img', '+0'] },
  // Refusals.
  { name: 'qcow2 shrink without --shrink', format: 'qcow2', setup: [create('qcow2', '', '1M')], resize: ['img', '-512K'] },
  { name: 'qcow2 unaligned size', format: 'qcow2', setup: [create('qcow2', '', '1M')], resize: ['img', '1048577'] },
  { name: 'qcow2 L1 table too large', format: 'qcow2', setup: [create('qcow2', '', '1M')], resize: ['img', '3P'] },
  { name: 'qcow2 size 0', format: 'qcow2', setup: [create('qcow2', '', '1M')], resize: ['img', '0'] },
  { name: 'qcow2 relative size below 0', format: 'qcow2', setup: [create('qcow2', '', '1M')], resize: ['img', '-3M'] },
  { name: 'size of 2^63 wraps negative', format: 'qcow2', setup: [create('qcow2', '', '1M')], resize: ['img', '8E'] },
  { name: 'size text', format: 'qcow2', setup: [create('qcow2', '', '1M')], resize: ['img', '12x'] },
  { name: 'size past 2^64', format: 'qcow2', setup: [create('qcow2', '', '1M')], resize: ['img', '100E'] },
  { name: 'unknown preallocation', format: 'qcow2', setup: [create('qcow2', '', '1M')], resize: ['--preallocation=bogus', 'img', '2M'] },
  { name: 'preallocation when shrinking', format: 'qcow2', setup: [create('qcow2', '', '1M')], resize: ['--preallocation=full', '--shrink', 'img', '512K'] },
  { name: 'preallocation at the same size', format: 'qcow2', setup: [create('qcow2', '', '1M')], resize: ['--preallocation=metadata', 'img', '1M'] },
  { name: 'missing file', format: 'qcow2', setup: [], resize: ['nonexistent', '1M'] },
  { name: 'no size', format: 'qcow2', setup: [create('qcow2', '', '1M')], resize: ['img'] },
  // QED.
  { name: 'QED grow', format: 'qed', setup: [create('qed', '', '1M'), io('qed', 'write -P 4 960K 64K')], resize: ['img', '10T'] },
  { name: 'QED beyond its tables', format: 'qed', setup: [create('qed', '', '1M')], resize: ['img', '1P'] },
  { name: 'QED shrink refused', format: 'qed', setup: [create('qed', '', '2M')], resize: ['--shrink', 'img', '1M'] },
  { name: 'QED preallocation refused', format: 'qed', setup: [create('qed', '', '1M')], resize: ['--preallocation=full', 'img', '2M'] },
  {
    name: 'QED over a longer backing file refused',
    format: 'qed',
    setup: [create('raw', '', '4M', 'base.raw'), ['img', ['create', '-q', '-f', 'qed', '-b', 'base.raw', '-F', 'raw', 'img', '1M']]],
    resize: ['img', '3M'],
  },
  // raw.
  { name: 'raw grow (probed)', format: 'raw', setup: [create('raw', '', '1M'), io('raw', 'write -P 8 0 1M')], resize: ['img', '3M'] },
  { name: 'raw grow to an unaligned size', format: 'raw', setup: [create('raw', '', '1M')], resize: ['-f', 'raw', 'img', '1048577'] },
  { name: 'raw shrink', format: 'raw', setup: [create('raw', '', '1M'), io('raw', 'write -P 8 0 1M')], resize: ['-f', 'raw', '--shrink', 'img', '512K'] },
  { name: 'raw shrink without --shrink', format: 'raw', setup: [create('raw', '', '1M')], resize: ['-f', 'raw', 'img', '512K'] },
  { name: 'raw --preallocation=full', format: 'raw', setup: [create('raw', '', '1M')], resize: ['-f', 'raw', '--preallocation=full', 'img', '2M'] },
  { name: 'raw --preallocation=falloc', format: 'raw', setup: [create('raw', '', '1M')], resize: ['-f', 'raw', '--preallocation=falloc', 'img', '2M'] },
  { name: 'raw --preallocation=metadata refused', format: 'raw', setup: [create('raw', '', '1M')], resize: ['-f', 'raw', '--preallocation=metadata', 'img', '2M'] },
];

/** The image made by `setup` in two directories, one for each tool. */
function prepare(c: Case): { ours: string; theirs: string } {
  const root = tmpDir('qimg-resize-');
  const base = join(root, 'base');
  mkdirSync(base);
  for (const [tool, args] of c.setup) {
    const r = tool === 'img' ? qemuImg(args, { cwd: base }) : qemuIo(args, { cwd: base });
    assert.equal(r.status, 0, `setup ${tool} ${args.join(' ')}: ${r.stderr}`);
  }
  const ours = join(root, 'ours');
  const theirs = join(root, 'theirs');
  cpSync(base, ours, { recursive: true });
  cpSync(base, theirs, { recursive: true });
  return { ours, theirs };
}

function sameOutcome(mine: RunResult, ref: RunResult, prog: string, what: string): void {
  assert.equal(asQemu(mine.stderr, prog), ref.stderr, `${what}: stderr`);
  assert.equal(mine.stdout, ref.stdout, `${what}: stdout`);
  assert.equal(mine.status, ref.status, `${what}: exit code`);
}

/** After both tools ran: the same image as qemu's by info, contents, and a clean check. */
function sameImage(c: Case, ours: string, theirs: string): void {
  const fmt = ['-f', c.format];
  const infoOurs = qemuImg(['info', ...fmt, '--output=json', 'img'], { cwd: ours });
  const infoTheirs = qemuImg(['info', ...fmt, '--output=json', 'img'], { cwd: theirs });
  assert.equal(infoOurs.status, 0, infoOurs.stderr);
  assert.equal(maskActualSize(infoOurs.stdout), maskActualSize(infoTheirs.stdout), 'qemu-img info');
  const cmp = qemuImg(['compare', '-f', c.format, '-F', c.format, join(ours, 'img'), join(theirs, 'img')], { cwd: ours });
  assert.equal(cmp.stdout, 'Images are identical.\n', `qemu-img compare: ${cmp.stdout}${cmp.stderr}`);
  if (c.format !== 'raw') {
    const check = qemuImg(['check', ...fmt, 'img'], { cwd: ours });
    assert.equal(check.status, 0, `qemu-img check: ${check.stdout}${check.stderr}`);
  }
}

for (const c of cases) {
  test(`resize: ${c.name}`, { timeout: 120_000 }, (t) => {
    if (!requireTools(t)) return;
    const { ours, theirs } = prepare(c);
    const ref = qemuImg(['resize', ...c.resize], { cwd: theirs });
    const mine = qimg(['resize', ...c.resize], { cwd: ours });
    sameOutcome(mine, ref, 'qemu-img', `resize ${c.resize.join(' ')}`);
    if (c.setup.length > 0) sameImage(c, ours, theirs);
  });
}

/** qemu-io truncate: qemu-io's output, and the same image afterwards. */
const truncates: Array<{ name: string; format: Case['format']; setup: Case['setup']; commands: string[] }> = [
  { name: 'qcow2 grow, shrink (no guard), unaligned', format: 'qcow2', setup: [create('qcow2', '', '4M'), io('qcow2', 'write -P 6 0 4M')], commands: ['truncate 8M', 'truncate 1000', 'truncate 1M', 'length'] },
  { name: 'qcow2 preallocation modes', format: 'qcow2', setup: [create('qcow2', '', '1M')], commands: ['truncate -m metadata 2M', 'truncate -m full 1M', 'truncate -m falloc 3M', 'truncate -m bogus 4M'] },
  { name: 'qcow2 usage errors', format: 'qcow2', setup: [create('qcow2', '', '1M')], commands: ['truncate', 'truncate -x 1M', 'truncate abc', 't 2M 3M', 'length'] },
  { name: 'QED grow and refusals', format: 'qed', setup: [create('qed', '', '1M')], commands: ['truncate 2M', 'truncate 1M', 'truncate 1000', 'truncate -m full 3M', 'length'] },
  { name: 'raw grow, shrink, preallocation', format: 'raw', setup: [create('raw', '', '1M')], commands: ['truncate 3M', 'truncate 1000', 'truncate -m full 2M', 'truncate -m full 1M', 'truncate -m metadata 4M', 'length'] },
];

for (const c of truncates) {
  test(`io truncate: ${c.name}`, { timeout: 60_000 }, (t) => {
    if (!requireTools(t)) return;
    const { ours, theirs } = prepare({ name: c.name, format: c.format, setup: c.setup, resize: [] });
    const args = ['-f', c.format, ...c.commands.flatMap((cmd) => ['-c', cmd]), 'img'];
    const ref = qemuIo(args, { cwd: theirs });
    const mine = qimg(['io', ...args], { cwd: ours });
    sameOutcome(mine, ref, 'qemu-io', c.commands.join('; '));
    sameImage({ name: c.name, format: c.format, setup: c.setup, resize: [] }, ours, theirs);
  });
}
