/**
 * Seed images for the fuzzer, made by qemu-img / qemu-io into a temporary
 * directory: every on-disk structure qimg parses appears in at least one
 * seed. Fields that QEMU fills from the clock or from random numbers
 * (snapshot dates, LUKS salts and iteration counts) are overwritten with
 * constants so that a fuzz seed means the same images on every run.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { rekeyLuks, xtsEncrypt } from './luks-seed.js';

export type SeedFormat = 'qcow2' | 'qed' | 'raw' | 'luks';

export interface Seed {
  name: string;
  format: SeedFormat;
  /** The file name the image is opened by (other files name it relatively). */
  file: string;
  bytes: Uint8Array;
  /** Files the image names (backing file, external data file), by the name it uses. */
  sidecars: Record<string, Uint8Array>;
}

interface SeedRecipe {
  name: string;
  format: SeedFormat;
  file: string;
  /** Commands run in the seed's own directory, in order. */
  steps: string[][];
  sidecars?: string[];
}

const K = 1024;
const M = 1024 * K;

const io = (file: string, fmt: string, ...cmds: string[]): string[] => ['qemu-io', '-f', fmt, ...cmds.flatMap((c) => ['-c', c]), file];
const pattern = (file: string, fmt: string): string[] =>
  io(file, fmt, `write -P 0x11 0 ${64 * K}`, `write -P 0x22 ${M} ${100 * K}`, `write -z ${2 * M} ${64 * K}`, `write -P 0x33 ${3 * M + 512} ${K}`);

const RECIPES: SeedRecipe[] = [
  {
    name: 'qcow2-v3-64k',
    format: 'qcow2',
    file: 'img.qcow2',
    steps: [['qemu-img', 'create', '-q', '-f', 'qcow2', 'img.qcow2', '4M'], pattern('img.qcow2', 'qcow2'), io('img.qcow2', 'qcow2', `discard ${M} 64k`)],
  },
  {
    name: 'qcow2-v2-64k',
    format: 'qcow2',
    file: 'img.qcow2',
    steps: [['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', 'img.qcow2', '4M'], io('img.qcow2', 'qcow2', `write -P 0x11 0 ${64 * K}`, `write -P 0x22 ${M} ${100 * K}`)],
  },
  {
    name: 'qcow2-512-compressed',
    format: 'qcow2',
    file: 'img.qcow2',
    steps: [
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512,refcount_bits=1', 'img.qcow2', '1M'],
      io('img.qcow2', 'qcow2', 'write -P 0x11 0 4k', 'write -c -P 0x22 64k 512', 'write -c -P 0x23 65k 512', 'write -P 0x33 200k 3k', 'write -z 300k 1k', 'write -P 0x44 900k 512'),
    ],
  },
  {
    name: 'qcow2-zlib',
    format: 'qcow2',
    file: 'img.qcow2',
    steps: [
      ['qemu-img', 'create', '-q', '-f', 'qcow2', 'img.qcow2', '2M'],
      io('img.qcow2', 'qcow2', 'write -c -P 0x41 0 64k', 'write -c -P 0x42 128k 64k', 'write -c -z 256k 64k', 'write -P 0x43 512k 4k', 'write -c -P 0x44 1M 64k'),
    ],
  },
  {
    name: 'qcow2-zstd-refcount64',
    format: 'qcow2',
    file: 'img.qcow2',
    steps: [
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'compression_type=zstd,refcount_bits=64,cluster_size=4k', 'img.qcow2', '2M'],
      io('img.qcow2', 'qcow2', 'write -c -P 0x51 0 4k', 'write -c -P 0x52 8k 4k', 'write -P 0x53 64k 8k', 'write -c -P 0x54 1M 4k'),
    ],
  },
  {
    name: 'qcow2-extl2',
    format: 'qcow2',
    file: 'img.qcow2',
    steps: [
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=64k', 'img.qcow2', '4M'],
      io('img.qcow2', 'qcow2', 'write -P 0x61 0 4k', 'write -P 0x62 70k 6k', 'write -z 128k 8k', 'write -z 1M 64k', 'write -P 0x63 3M 64k', 'discard 3M 4k'),
    ],
  },
  {
    name: 'qcow2-snapshots',
    format: 'qcow2',
    file: 'img.qcow2',
    steps: [
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', 'img.qcow2', '2M'],
      io('img.qcow2', 'qcow2', 'write -P 0x71 0 8k', 'write -P 0x72 1M 4k'),
      ['qemu-img', 'snapshot', '-c', 'first', 'img.qcow2'],
      io('img.qcow2', 'qcow2', 'write -P 0x73 0 4k', 'write -P 0x74 512k 4k'),
      ['qemu-img', 'snapshot', '-c', 'second', 'img.qcow2'],
      io('img.qcow2', 'qcow2', 'write -z 1M 4k'),
    ],
  },
  {
    name: 'qcow2-bitmap',
    format: 'qcow2',
    file: 'img.qcow2',
    steps: [
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', 'img.qcow2', '2M'],
      ['qemu-img', 'bitmap', '--add', 'img.qcow2', 'b0'],
      ['qemu-img', 'bitmap', '--add', '-g', '512', 'img.qcow2', 'b1'],
      io('img.qcow2', 'qcow2', 'write -P 0x81 0 4k', 'write -P 0x82 1M 64k'),
    ],
  },
  {
    name: 'qcow2-backing',
    format: 'qcow2',
    file: 'img.qcow2',
    sidecars: ['base.qcow2'],
    steps: [
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', 'base.qcow2', '2M'],
      io('base.qcow2', 'qcow2', 'write -P 0x91 0 64k', 'write -P 0x92 1M 64k'),
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', '-b', 'base.qcow2', '-F', 'qcow2', 'img.qcow2', '3M'],
      io('img.qcow2', 'qcow2', 'write -P 0x93 4k 4k', 'write -z 1M 4k', 'write -P 0x94 2M 4k'),
    ],
  },
  {
    name: 'qcow2-datafile',
    format: 'qcow2',
    file: 'img.qcow2',
    sidecars: ['img.data'],
    steps: [
      ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'data_file=img.data,cluster_size=4k', 'img.qcow2', '1M'],
      io('img.qcow2', 'qcow2', 'write -P 0xa1 0 8k', 'write -P 0xa2 512k 4k', 'write -z 768k 4k'),
    ],
  },
  {
    name: 'qcow2-luks',
    format: 'qcow2',
    file: 'img.qcow2',
    steps: [
      [
        'qemu-img',
        'create',
        '-q',
        '--object',
        'secret,id=sec0,data=fuzz',
        '-f',
        'qcow2',
        '-o',
        'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10,cluster_size=4k',
        'img.qcow2',
        '1M',
      ],
    ],
  },
  {
    // A raw LUKS volume (re-keyed to FUZZ_PASSPHRASE with small iteration counts, guest data written after).
    name: 'luks',
    format: 'luks',
    file: 'img.luks',
    steps: [['qemu-img', 'create', '-q', '--object', 'secret,id=sec0,data=fuzz', '-f', 'luks', '-o', 'key-secret=sec0,iter-time=10', 'img.luks', '256k']],
  },
  {
    name: 'qed',
    format: 'qed',
    file: 'img.qed',
    steps: [['qemu-img', 'create', '-q', '-f', 'qed', 'img.qed', '4M'], pattern('img.qed', 'qed')],
  },
  {
    name: 'qed-small-tables-backing',
    format: 'qed',
    file: 'img.qed',
    sidecars: ['base.raw'],
    steps: [
      ['qemu-img', 'create', '-q', '-f', 'raw', 'base.raw', '1M'],
      io('base.raw', 'raw', 'write -P 0xb1 0 64k'),
      ['qemu-img', 'create', '-q', '-f', 'qed', '-o', 'cluster_size=4k,table_size=2', '-b', 'base.raw', '-F', 'raw', 'img.qed', '2M'],
      io('img.qed', 'qed', 'write -P 0xb2 4k 4k', 'write -z 8k 4k', 'write -P 0xb3 1536k 8k'),
    ],
  },
  {
    name: 'raw',
    format: 'raw',
    file: 'img.raw',
    steps: [['qemu-img', 'create', '-q', '-f', 'raw', 'img.raw', '64k'], io('img.raw', 'raw', 'write -P 0xc1 0 4k')],
  },
];

/** Whether qemu-img and qemu-io can be run. */
export function haveQemu(): boolean {
  try {
    return spawnSync('qemu-img', ['--version']).status === 0 && spawnSync('qemu-io', ['--version']).status === 0;
  } catch {
    return false;
  }
}

/** Make every seed; throws if a reference tool fails. */
export function makeSeeds(): Seed[] {
  const root = mkdtempSync(join(tmpdir(), 'qimg-fuzz-seeds-'));
  try {
    return RECIPES.map((r) => makeSeed(root, r));
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

/** One seed by name (regression tests rebuild only the seed they mutate). */
export function makeSeedNamed(name: string): Seed {
  const r = RECIPES.find((x) => x.name === name);
  if (!r) throw new Error(`no seed named ${name}`);
  const root = mkdtempSync(join(tmpdir(), 'qimg-fuzz-seed-'));
  try {
    return makeSeed(root, r);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

export const SEED_NAMES: readonly string[] = RECIPES.map((r) => r.name);

function makeSeed(root: string, r: SeedRecipe): Seed {
  const dir = join(root, r.name);
  mkdirSync(dir, { recursive: true });
  for (const step of r.steps) {
    const [cmd, ...args] = step;
    // LUKS creation measures PBKDF speed and now and then fails to ("Unable to get accurate CPU usage"): retry.
    let res = spawnSync(cmd!, args, { cwd: dir, encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' }, timeout: 60_000 });
    for (let i = 0; i < 4 && res.status !== 0 && /CPU usage/.test(res.stderr ?? ''); i++) {
      res = spawnSync(cmd!, args, { cwd: dir, encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' }, timeout: 60_000 });
    }
    if (res.status !== 0) throw new Error(`seed ${r.name}: ${step.join(' ')} failed: ${res.stderr || res.error?.message}`);
  }
  const bytes = new Uint8Array(readFileSync(join(dir, r.file)));
  if (r.format === 'qcow2') normaliseQcow2(bytes);
  if (r.format === 'luks') normaliseLuksVolume(bytes);
  const sidecars: Record<string, Uint8Array> = {};
  for (const s of r.sidecars ?? []) sidecars[s] = new Uint8Array(readFileSync(join(dir, s)));
  return { name: r.name, format: r.format, file: r.file, bytes, sidecars };
}

/** Overwrite clock- and random-derived qcow2 fields with constants. */
function normaliseQcow2(b: Uint8Array): void {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const cs = 2 ** v.getUint32(20);
  // Snapshot table: date_sec, date_nsec and vm_clock_nsec of every entry.
  const nb = v.getUint32(60);
  let p = Number(v.getBigUint64(64));
  for (let i = 0; i < nb && p + 40 <= b.length; i++) {
    v.setUint32(p + 16, 0x5f5e1000 + i);
    v.setUint32(p + 20, 0);
    v.setBigUint64(p + 24, 0n);
    const idSize = v.getUint16(p + 12);
    const nameSize = v.getUint16(p + 14);
    const extra = v.getUint32(p + 36);
    p += 40 + extra + idSize + nameSize;
    p = (p + 7) & ~7;
  }
  // LUKS header (crypto header extension): salts, digests, UUID and iteration counts.
  if (v.getUint32(4) === 3) {
    let e = v.getUint32(100);
    while (e + 8 <= cs) {
      const magic = v.getUint32(e);
      const len = v.getUint32(e + 4);
      if (magic === 0) break;
      if (magic === 0x0537be77 && len === 16) {
        const off = Number(v.getBigUint64(e + 8));
        // The image has no guest data yet: the new master key encrypts what the fuzzer writes.
        if (off + 592 <= b.length) rekeyLuks(b, off);
      }
      e += 8 + ((len + 7) & ~7);
    }
  }
}

/** A raw LUKS volume: the header re-keyed, then a pattern in the first sectors of the payload, encrypted. */
function normaliseLuksVolume(b: Uint8Array): void {
  const masterKey = rekeyLuks(b, 0);
  const payload = new DataView(b.buffer, b.byteOffset).getUint32(104) * 512;
  const plain = new Uint8Array(8 * 512).map((_, i) => 0xd0 + (i >> 9));
  if (payload + plain.length <= b.length) b.set(xtsEncrypt(masterKey, plain, 0), payload);
}
