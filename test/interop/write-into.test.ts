/**
 * Writing into images qemu made: the same qemu-io command list applied by
 * `qimg io` to one copy and by qemu-io to another leaves images that
 * `qemu-img compare` calls identical, and ours passes `qemu-img check`.
 * qimg io prints what qemu-io prints, byte for byte apart from the timings.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { qimgCommand } from '../helpers/cli.js';
import { maskIoTiming } from '../helpers/normalise.js';

const haveQemu = spawnSync('qemu-img', ['--version']).status === 0;
if (!haveQemu && process.env.CI) throw new Error('qemu-img is required when CI is set');

const run = (cmd: string, args: string[], cwd: string) => spawnSync(cmd, args, { cwd, encoding: 'utf8' });

interface Kind {
  name: string;
  /** Makes `img` (and whatever it needs) in cwd with qemu-img/qemu-io. */
  make: (cwd: string) => void;
  format: 'qcow2' | 'qed';
  /** Other files to copy along with the image (backing or data files written by the commands). */
  companions?: string[];
  compressed?: boolean;
}

const q = (cwd: string, ...args: string[]) => assert.equal(run('qemu-img', args, cwd).status, 0, args.join(' '));
const io = (cwd: string, img: string, ...cmds: string[]) => assert.equal(run('qemu-io', [...cmds.flatMap((c) => ['-c', c]), img], cwd).status, 0, cmds.join('; '));

function patterned(cwd: string, name: string, size: number): void {
  const b = new Uint8Array(size);
  for (let i = 0; i < size; i++) b[i] = (i >> 9) % 7 === 0 ? 0 : (i * 31 + (i >> 12)) & 0xff;
  writeFileSync(join(cwd, name), b);
}

const kinds: Kind[] = [
  {
    name: 'zlib-compressed qcow2',
    format: 'qcow2',
    compressed: true,
    make: (cwd) => {
      patterned(cwd, 'src.raw', 4 << 20);
      q(cwd, 'convert', '-c', '-f', 'raw', '-O', 'qcow2', 'src.raw', 'img');
    },
  },
  {
    name: 'zstd-compressed qcow2',
    format: 'qcow2',
    compressed: true,
    make: (cwd) => {
      patterned(cwd, 'src.raw', 4 << 20);
      q(cwd, 'convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'compression_type=zstd,cluster_size=4096', 'src.raw', 'img');
    },
  },
  {
    name: 'extended L2 over a raw backing file',
    format: 'qcow2',
    make: (cwd) => {
      patterned(cwd, 'base.raw', 4 << 20);
      q(cwd, 'create', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=65536', '-b', 'base.raw', '-F', 'raw', 'img');
      io(cwd, 'img', 'write -P 1 4096 2048', 'write -z 131072 8192', 'discard 262144 65536');
    },
  },
  {
    name: 'qcow2 chain (qcow2 over qcow2 over raw)',
    format: 'qcow2',
    make: (cwd) => {
      patterned(cwd, 'base.raw', 4 << 20);
      q(cwd, 'create', '-f', 'qcow2', '-o', 'cluster_size=4096', '-b', 'base.raw', '-F', 'raw', 'mid.qcow2');
      io(cwd, 'mid.qcow2', 'write -P 2 1M 300k', 'write -z 2M 64k');
      q(cwd, 'create', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', 'img');
      io(cwd, 'img', 'write -P 3 1100k 8k');
    },
  },
  {
    name: 'external data file',
    format: 'qcow2',
    companions: ['img.data'],
    make: (cwd) => {
      q(cwd, 'create', '-f', 'qcow2', '-o', 'data_file=img.data', 'img', '4M');
      io(cwd, 'img', 'write -P 4 0 100k');
    },
  },
  {
    name: 'raw external data file',
    format: 'qcow2',
    companions: ['img.data'],
    make: (cwd) => {
      q(cwd, 'create', '-f', 'qcow2', '-o', 'data_file=img.data,data_file_raw=on', 'img', '4M');
      io(cwd, 'img', 'write -P 4 0 100k');
    },
  },
  {
    name: 'QED over a raw backing file',
    format: 'qed',
    make: (cwd) => {
      patterned(cwd, 'base.raw', 4 << 20);
      q(cwd, 'create', '-f', 'qed', '-b', 'base.raw', '-F', 'raw', 'img');
      io(cwd, 'img', 'write -P 5 64k 64k');
    },
  },
];

function commands(compressed: boolean): string[] {
  const c = [
    'write -P 0x11 0 4096',
    'write -P 0x22 65000 70000',
    'write -P 0x33 1536k 12345',
    'write -z 200k 100k',
    'write -z -u 1M 128k',
    'discard 3M 256k',
    'write -P 0x44 3100k 1000',
    'flush',
    'write -P 0x55 4095k 1k',
  ];
  // A compressed write needs a cluster without host data: unmap one first.
  if (compressed) c.push('write -z -u 2M 64k', 'write -c -P 0x66 2M 64k');
  return c;
}

for (const k of kinds) {
  test(`writing into a qemu-made image: ${k.name}`, { skip: !haveQemu }, () => {
    const root = mkdtempSync(join(tmpdir(), 'qimg-into-'));
    try {
      const ours = join(root, 'ours');
      const theirs = join(root, 'theirs');
      for (const d of [ours, theirs]) assert.equal(spawnSync('mkdir', ['-p', d]).status, 0);
      k.make(ours);
      for (const f of spawnSync('ls', [ours], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean)) copyFileSync(join(ours, f), join(theirs, f));
      const cmds = commands(k.compressed ?? false);
      const mine = run(...qimgCommand(['io', '-f', k.format, ...cmds.flatMap((c) => ['-c', c]), 'img']), ours);
      assert.equal(mine.status, 0, mine.stderr);
      const ref = run('qemu-io', ['-f', k.format, ...cmds.flatMap((c) => ['-c', c]), 'img'], theirs);
      assert.equal(ref.status, 0, ref.stderr);
      assert.equal(maskIoTiming(mine.stdout), maskIoTiming(ref.stdout));
      assert.equal(mine.stderr, ref.stderr);
      // Exported in each directory: qemu 7.2 resolves relative data-file names against the working directory.
      for (const d of [ours, theirs]) assert.equal(run('qemu-img', ['convert', '-f', k.format, '-O', 'raw', 'img', 'out.raw'], d).status, 0);
      const cmp = run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', join(ours, 'out.raw'), join(theirs, 'out.raw')], root);
      assert.equal(cmp.status, 0, cmp.stdout + cmp.stderr);
      const chk = run('qemu-img', ['check', '-f', k.format, 'img'], ours);
      assert.equal(chk.status, 0, chk.stdout + chk.stderr);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
}
