/**
 * How qemu-io opens an image (its command line, `open` and `reopen`), and
 * the library call that does it. Every setting that changes data
 * (copy-on-read, discard=ignore, snapshot mode) is an open option of the
 * library, not something done here.
 */
import { jsonFilenameOptions, openImageFile, openTargetFromOptions, parseFormatName, parseOpenTarget, type CacheMode, type DiscardMode, type Image, type OpenTarget, type SecretMap } from '../../node.js';
import { dropsFlushes } from '../../node.js';
import { err, PROG } from '../common.js';

export interface OpenSettings {
  /** The image operand: a filename (json:, file: or a path), or with `imageOpts` an option string. */
  name?: string;
  imageOpts: boolean;
  /** `open -o`: options for the block driver, the filename becoming file.filename. */
  options: Array<[string, string]>;
  /** -f */
  format?: string;
  readOnly: boolean;
  snapshot: boolean;
  copyOnRead: boolean;
  forceShare: boolean;
  cache: CacheMode;
  discard: DiscardMode;
  /** -i native / -k: Linux AIO, which needs O_DIRECT (cache none or directsync). */
  nativeAio: boolean;
}

export const defaultSettings = (): OpenSettings => ({
  imageOpts: false,
  options: [],
  readOnly: false,
  snapshot: false,
  copyOnRead: false,
  forceShare: false,
  cache: 'writeback',
  discard: 'unmap', // qemu-io opens with discard=unmap
  nativeAio: false,
});

/** qemu's discard option names. */
export function parseDiscardMode(text: string): DiscardMode | undefined {
  if (text === 'ignore' || text === 'off') return 'ignore';
  if (text === 'unmap' || text === 'on') return 'unmap';
  return undefined;
}

/** -i: each mode only picks how requests reach the kernel; qimg's results are the same for all. */
export function parseAioMode(text: string): 'threads' | 'native' | 'io_uring' | undefined {
  return text === 'threads' || text === 'native' || text === 'io_uring' ? text : undefined;
}

/** What the settings name: a path and its open options. */
function targetOf(st: OpenSettings): OpenTarget {
  const name = st.name ?? '';
  if (st.imageOpts) {
    const target = parseOpenTarget(name);
    for (const key of target.shortForm) err(`${PROG}: warning: short-form boolean option '${key}' deprecated\nPlease use ${key}=on instead\n`);
    return target;
  }
  if (st.options.length > 0) {
    const opts = new Map(st.options);
    if (st.name !== undefined) {
      if (st.name.startsWith('json:')) {
        for (const [k, v] of jsonFilenameOptions(st.name)) if (!opts.has(k)) opts.set(k, v);
      } else if (!opts.has('file.filename') && !opts.has('file')) {
        opts.set('file.filename', st.name.replace(/^file:/, ''));
      }
    }
    if (st.format !== undefined && !opts.has('driver')) opts.set('driver', st.format);
    return openTargetFromOptions(opts);
  }
  const target: OpenTarget = { path: name, blockOptions: {}, shortForm: [] };
  if (st.format !== undefined) {
    target.format = parseFormatName(st.format);
    if (target.format === undefined) throw new Error(`Unknown driver '${st.format}'`);
  }
  return target;
}

/** Open as the settings say; errors carry qemu's reason (the caller adds "can't open device X: "). */
export async function openWithSettings(st: OpenSettings, secrets: SecretMap): Promise<Image> {
  if (st.nativeAio && st.cache !== 'none' && st.cache !== 'directsync') {
    throw new Error('aio=native was specified, but it requires cache.direct=on, which was not specified.');
  }
  const t = targetOf(st);
  if (t.readOnly && !st.readOnly) throw new Error('Block node is read-only');
  return openImageFile(t.path, {
    format: t.format,
    writable: !st.readOnly,
    snapshot: st.snapshot,
    unsafe: dropsFlushes(st.cache),
    forceShare: st.forceShare,
    secrets,
    blockOptions: t.blockOptions,
    locking: t.locking,
    copyOnRead: st.copyOnRead,
    discard: st.discard,
    onWarning: err,
  });
}

/** qemu-io names no device for an open that has no filename (--image-opts, `open -o`). */
export const cantOpen = (st: OpenSettings): string => (st.imageOpts || st.name === undefined ? "can't open" : `can't open device ${st.name}`);
