/**
 * qimg rebase against qemu-img rebase: the same command on twin copies of
 * images qemu made (qcow2 v2 and v3, QED, raw backing files, chains of
 * three, compressed and zero clusters) leaves images with the same info,
 * guest content and map, that qemu-img check passes; failures print the
 * same messages with the same exit codes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { qemuImg, requireTools } from '../helpers/tools.js';
import { assertSameImage, assertSameOutput, twinRun } from '../helpers/side-by-side.js';

const TWO_BACKINGS = `
qemu-img create -q -f qcow2 base.qcow2 4M; qemu-io -c 'write -P 1 0 1M' -c 'write -P 2 2M 512k' base.qcow2 >/dev/null
qemu-img create -q -f qcow2 nb.qcow2 4M; qemu-io -c 'write -P 3 512k 1M' nb.qcow2 >/dev/null
qemu-img create -q -f raw nb.raw 3M; qemu-io -f raw -c 'write -P 4 256k 1M' nb.raw >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2; qemu-io -c 'write -P 9 768k 64k' -c 'write -c -P 8 3M 64k' top.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o compat=0.10 -b base.qcow2 -F qcow2 v2.qcow2 5M; qemu-io -c 'write -P 9 768k 64k' -c 'write -z 3M 64k' v2.qcow2 >/dev/null
qemu-img create -q -f qed -b base.qcow2 -F qcow2 top.qed 5M; qemu-io -c 'write -P 9 768k 64k' top.qed >/dev/null
mkdir sub; qemu-img create -q -f qcow2 sub/b2.qcow2 4M; qemu-io -c 'write -P 7 1M 1M' sub/b2.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b b2.qcow2 -F qcow2 sub/t.qcow2; qemu-io -c 'write -c -P 8 0 64k' sub/t.qcow2 >/dev/null
for f in top.qcow2 v2.qcow2 top.qed sub/t.qcow2; do qemu-img convert -O raw $f $f.expected; done
`;

const CHAIN = `
qemu-img create -q -f qcow2 base.qcow2 4M; qemu-io -c 'write -P 1 0 2M' base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2; qemu-io -c 'write -P 2 1M 1M' -c 'write -z 0 64k' mid.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2; qemu-io -c 'write -P 3 1536k 64k' top.qcow2 >/dev/null
qemu-img convert -O raw top.qcow2 top.qcow2.expected
`;

// A middle layer shorter than the layers around it: past its end it reads
// zeroes, hiding what its own backing file holds there.
const SHORT_MIDDLE = `
qemu-img create -q -f qcow2 base.qcow2 320k; qemu-io -c 'write -P 0x11 0 320k' base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2 256k; qemu-io -c 'write -P 0x22 0 256k' mid.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 320k
qemu-img convert -O raw top.qcow2 top.qcow2.expected
`;

/** The rebased image reads as it did before (safe mode), in both directories. */
function assertContentKept(dir: string, img: string): void {
  const r = qemuImg(['compare', '-U', img, `${img}.expected`], { cwd: dir });
  assert.equal(r.status, 0, `${img} changed: ${r.stdout}${r.stderr}`);
}

const safeCases: Array<{ name: string; setup: string; args: string[]; img: string }> = [
  { name: 'qcow2 v3 onto another qcow2', setup: TWO_BACKINGS, args: ['-b', 'nb.qcow2', '-F', 'qcow2'], img: 'top.qcow2' },
  { name: 'qcow2 v3 onto a shorter raw file', setup: TWO_BACKINGS, args: ['-b', 'nb.raw', '-F', 'raw'], img: 'top.qcow2' },
  { name: 'qcow2 v2 (zero cluster) onto raw', setup: TWO_BACKINGS, args: ['-b', 'nb.raw', '-F', 'raw'], img: 'v2.qcow2' },
  { name: 'QED onto raw (no-probe bit)', setup: TWO_BACKINGS, args: ['-b', 'nb.raw', '-F', 'raw'], img: 'top.qed' },
  { name: 'QED onto qcow2 (probed)', setup: TWO_BACKINGS, args: ['-b', 'nb.qcow2', '-F', 'qcow2'], img: 'top.qed' },
  { name: 'relative name in a subdirectory', setup: TWO_BACKINGS, args: ['-b', '../nb.raw', '-F', 'raw'], img: 'sub/t.qcow2' },
  { name: 'flatten (-b "")', setup: TWO_BACKINGS, args: ['-b', ''], img: 'top.qcow2' },
  { name: 'flatten QED', setup: TWO_BACKINGS, args: ['-b', '', '-F', 'raw'], img: 'top.qed' },
  { name: 'chain of three onto its base', setup: CHAIN, args: ['-b', 'base.qcow2', '-F', 'qcow2'], img: 'top.qcow2' },
  { name: 'chain of three, progress', setup: CHAIN, args: ['-p', '-b', 'base.qcow2', '-F', 'qcow2'], img: 'top.qcow2' },
  { name: 'progress over a larger image', setup: TWO_BACKINGS, args: ['-p', '-b', 'nb.qcow2', '-F', 'qcow2'], img: 'v2.qcow2' },
  { name: 'chain of three flattened', setup: CHAIN, args: ['-b', ''], img: 'top.qcow2' },
  { name: 'onto the base below a shorter middle layer', setup: SHORT_MIDDLE, args: ['-b', 'base.qcow2', '-F', 'qcow2'], img: 'top.qcow2' },
];

for (const c of safeCases) {
  test(`rebase: ${c.name}`, (t) => {
    if (!requireTools(t)) return;
    const twins = twinRun(c.setup, ['rebase', ...c.args, c.img]);
    assertSameOutput(twins);
    assert.equal(twins.oursRun.status, 0);
    assertSameImage(twins, c.img, { map: true });
    assertContentKept(twins.ours, c.img);
    assertContentKept(twins.qemu, c.img);
  });
}

test('rebase -u rewrites only the header, as qemu-img writes it', (t) => {
  if (!requireTools(t)) return;
  for (const [args, img] of [
    [['-u', '-b', 'missing.img', '-F', 'raw'], 'top.qcow2'],
    [['-u', '-b', 'nb.qcow2', '-F', 'qcow2'], 'v2.qcow2'],
    [['-u', '-b', 'nb.raw', '-F', 'raw'], 'top.qed'],
    [['-u', '-b', 'nb.qcow2', '-F', 'qcow2'], 'top.qed'],
    [['-u', '-b', ''], 'top.qcow2'],
    // A driver qimg cannot open but qemu knows: -u only records it (iotest 031).
    [['-u', '-b', '/some/backing/file/path', '-F', 'host_device'], 'top.qcow2'],
  ] as const) {
    const twins = twinRun(TWO_BACKINGS, ['rebase', ...args, img]);
    assertSameOutput(twins);
    const head = (dir: string) => qemuImg(['dd', '-f', 'raw', '-O', 'raw', 'bs=4096', 'count=1', `if=${join(dir, img)}`, `of=${join(dir, 'head')}`]);
    head(twins.qemu);
    head(twins.ours);
    const same = qemuImg(['compare', '-f', 'raw', '-F', 'raw', join(twins.qemu, 'head'), join(twins.ours, 'head')]);
    assert.equal(same.status, 0, `first 4 KiB of ${img} after ${args.join(' ')}`);
    const info = qemuImg(['info', '--output=json', '--backing-chain', img], { cwd: twins.ours });
    if (args[2] !== 'missing.img' && !args[2]?.startsWith('/')) assert.equal(info.status, 0, info.stderr);
  }
});

const failures: Array<{ name: string; args: string[] }> = [
  { name: 'missing new backing file', args: ['rebase', '-b', 'missing.qcow2', '-F', 'qcow2', 'top.qcow2'] },
  { name: 'no backing format', args: ['rebase', '-b', 'nb.qcow2', 'top.qcow2'] },
  { name: 'no backing format, unsafe', args: ['rebase', '-u', '-b', 'nb.qcow2', 'top.qcow2'] },
  { name: 'wrong backing format', args: ['rebase', '-b', 'nb.qcow2', '-F', 'qed', 'top.qcow2'] },
  { name: 'unknown backing format', args: ['rebase', '-b', 'nb.qcow2', '-F', 'foo', 'top.qcow2'] },
  { name: 'unknown backing format, unsafe', args: ['rebase', '-u', '-b', 'nb.qcow2', '-F', 'foo', 'top.qcow2'] },
  { name: 'no -b, safe mode', args: ['rebase', 'top.qcow2'] },
  { name: 'no image', args: ['rebase', '-b', 'x'] },
  { name: 'two images', args: ['rebase', '-b', 'nb.qcow2', '-F', 'qcow2', 'top.qcow2', 'v2.qcow2'] },
  { name: 'bad cache', args: ['rebase', '-t', 'foo', '-b', 'nb.qcow2', 'top.qcow2'] },
  { name: 'bad source cache', args: ['rebase', '-T', 'foo', '-b', 'nb.qcow2', 'top.qcow2'] },
  { name: 'unknown image format', args: ['rebase', '-f', 'foo', '-b', 'nb.qcow2', '-F', 'qcow2', 'top.qcow2'] },
  { name: 'wrong image format', args: ['rebase', '-f', 'qed', '-b', 'nb.qcow2', '-F', 'qcow2', 'top.qcow2'] },
  { name: 'missing image', args: ['rebase', '-b', 'nb.qcow2', '-F', 'qcow2', 'nosuch.qcow2'] },
  { name: '-c is not a rebase option in 7.2', args: ['rebase', '-c', '-b', 'nb.qcow2', 'top.qcow2'] },
  { name: 'a raw image has no backing file', args: ['rebase', '-u', '-b', 'nb.qcow2', '-F', 'qcow2', '-f', 'raw', 'nb.raw'] },
  { name: 'a name too long for qcow2', args: ['rebase', '-u', '-b', 'a'.repeat(1100), '-F', 'raw', 'top.qcow2'] },
];

for (const c of failures) {
  test(`rebase fails as qemu-img does: ${c.name}`, (t) => {
    if (!requireTools(t)) return;
    const twins = twinRun(TWO_BACKINGS, c.args);
    assertSameOutput(twins);
    assert.notEqual(twins.oursRun.status, 0);
    assertSameImage(twins, 'top.qcow2');
  });
}
