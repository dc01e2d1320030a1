/**
 * qcow2 creation options (`-o` of create, convert and measure), checked
 * with qemu's rules and messages. Defaults: compat 1.1, 64 KiB clusters,
 * 16-bit refcounts, zlib, no preallocation.
 */
import { ImageError } from '../../errors.js';
import type { OptionBag } from '../../block/options.js';
import { isPowerOfTwo } from '../../units.js';

export type Preallocation = 'off' | 'metadata' | 'falloc' | 'full';

export interface Qcow2CreateOptions {
  size?: number;
  version: 2 | 3;
  clusterSize: number;
  refcountBits: number;
  lazyRefcounts: boolean;
  extendedL2: boolean;
  compressionType: 'zlib' | 'zstd';
  preallocation: Preallocation;
  backingFile?: string;
  backingFmt?: string;
  dataFile?: string;
  dataFileRaw: boolean;
  encryptFormat?: string;
  /** The id of the secret holding the passphrase (encrypt.key-secret). */
  encryptKeySecret?: string;
  /** The other encrypt.* options given (cipher-alg, iter-time, ...), by their name after 'encrypt.'. */
  encryptOptions?: Readonly<Record<string, string>>;
}

const bad = (msg: string) => new ImageError('bad-argument', msg);

/** The options measure reads (qcow2_measure): fewer checks than create. */
export function parseMeasureOptions(bag: OptionBag): Qcow2CreateOptions {
  const extendedL2 = bag.bool('extended_l2', false);
  const clusterSize = clusterSizeOf(bag);
  const version = versionOf(bag);
  const refcountBits = refcountBitsOf(bag, version);
  const preallocation = preallocationOf(bag);
  const backingFile = bag.string('backing_file');
  const encryptFormat = bag.string('encrypt.format');
  const size = bag.size('size');
  if (extendedL2 && clusterSize < 16384) {
    throw bad('Extended L2 entries are only supported with cluster sizes of at least 16384 bytes');
  }
  // Options measure accepts and ignores.
  for (const k of ['backing_fmt', 'lazy_refcounts', 'compression_type', 'data_file', 'data_file_raw', 'encryption']) bag.string(k);
  for (const k of ['cipher-alg', 'cipher-mode', 'hash-alg', 'iter-time', 'ivgen-alg', 'ivgen-hash-alg', 'key-secret']) bag.string(`encrypt.${k}`);
  return {
    size,
    version,
    clusterSize,
    refcountBits,
    lazyRefcounts: false,
    extendedL2,
    compressionType: 'zlib',
    preallocation,
    backingFile,
    dataFileRaw: false,
    encryptFormat,
  };
}

export function clusterSizeOf(bag: OptionBag): number {
  const cs = bag.size('cluster_size', 65536);
  if (!isPowerOfTwo(cs) || cs < 512 || cs > 2 * 1024 * 1024) {
    throw bad('Cluster size must be a power of two between 512 and 2048k');
  }
  return cs;
}

export function versionOf(bag: OptionBag): 2 | 3 {
  const v = bag.string('compat');
  if (v === undefined || v === '1.1') return 3;
  if (v === '0.10') return 2;
  throw bad(`Invalid compatibility level: '${v}'`);
}

export function refcountBitsOf(bag: OptionBag, version: 2 | 3): number {
  const bits = bag.number('refcount_bits', 16);
  if (bits > 64 || !isPowerOfTwo(bits)) throw bad('Refcount width must be a power of two and may not exceed 64 bits');
  if (version < 3 && bits !== 16) {
    throw bad('Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)');
  }
  return bits;
}

export function preallocationOf(bag: OptionBag): Preallocation {
  const p = bag.string('preallocation') ?? 'off';
  if (p === 'off' || p === 'metadata' || p === 'falloc' || p === 'full') return p;
  throw bad(`invalid parameter value: ${p}`);
}
