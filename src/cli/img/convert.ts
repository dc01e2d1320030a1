/** qemu-img convert: raw targets are written as files, qcow2 and QED targets through Image. */
import { availableParallelism } from 'node:os';
import type { Image } from '../../block/image.js';
import { imagePermissions } from '../../block/perms.js';
import { parseFormatName } from '../../block/probe.js';
import { openImageFile } from '../../node.js';
import { FileStorage } from '../../io/file.js';
import type { Storage } from '../../io/storage.js';
import { convertImages, ConvertError, totalSize, type ConvertTarget } from '../../ops/convert.js';
import { dropsFlushes, flushesEachWrite, parseCacheMode } from '../../io/cache.js';
import { rateLimited } from '../../ops/ratelimit.js';
import { writethroughTarget } from '../../ops/writethrough.js';
import { CliError, cvtnum, err, messageOf, openCli, out, PROG, Progress } from '../common.js';
import { getopt, parseSize } from '../options.js';
import { convertToStdout } from './convert-stream.js';
import { accumulate, createFormatted, CreateError, hasHelpOption, optionHelp, parseCreateOptions } from './create.js';

export const convertHelp = `usage: qimg convert [-U] [-C] [-c] [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt] [-B backing_file [-F backing_fmt]] [-o options] [-S sparse_size] [-r rate_limit] [-m num_coroutines] [-W] [--salvage] [--target-is-zero] filename [filename2 [...]] output_filename

Copy one or more images (concatenated) into a new image.
  -f, --source-format=FMT  format of the source images; probed when absent
  -O, --target-format=FMT  output format: raw (default), qcow2 or qed
  -o, --target-format-options=OPTIONS  creation options of the output (-o help lists them)
  -c, --compress           compress every data cluster (qcow2), on all cores
  -B, --backing=FILE       backing file of the output: only what the sources'
                           top layers allocate is copied
  -F, --backing-format=FMT format of that backing file (required with -B)
  -n, --no-create          write into an existing output file, which must be large enough
  --target-is-zero         with -n: the output already reads as zeros, zeros are not written
  -S, --sparse-size=SIZE   zero detection granularity (default 4k, 0 = fully allocate)
  -m, --parallel=N         requests in flight, 1..16 (default 8)
  -W, --oob-writes         allow out-of-order writes (default: writes in image order)
  -r, --rate-limit=RATE    limit writes to RATE bytes per second
  -C, --copy-range-offloading  try copy offloading (qimg always copies normally, as qemu
                           does where offloading is not possible)
  --salvage                read unreadable sectors as zeros, with a warning each
  -t, --target-cache=CACHE output cache mode (default unsafe: no flush; writethrough,
                           directsync: flush after every write; none, writeback: flush at the end)
  -T, --source-cache=CACHE source cache mode (the sources are only read)
  -p, --progress           show progress
  -q, --quiet              print nothing
  -U, --force-share        read the sources even while another process writes them
                           (the output is always locked)
`;

const SECTOR = 512;
const MAX_SPARSE = 32768 * SECTOR;

/** A raw file as a convert target: writes go straight to the file. */
export function storageTarget(st: Storage): ConvertTarget {
  return {
    write: (offset, data) => st.write(data, offset),
    writeZeroes: st.writeZeroes ? (offset, length) => st.writeZeroes!(offset, length) : undefined,
    flush: () => st.flush(),
    close: () => st.close(),
  };
}

/** A writable image as a convert target. */
export function imageTarget(img: Image): ConvertTarget {
  return {
    write: (offset, data) => img.write(offset, data),
    writeCompressed: (offset, data) => img.write(offset, data, { compressed: true }),
    writeZeroes: (offset, length) => img.writeZeroes(offset, length, { mayUnmap: true }),
    flush: () => img.flush(),
    close: () => img.close(),
  };
}

/** A value by name without disturbing later parsing (reading marks it used, which is harmless here). */
const OptionBagPeek = (bag: { string(k: string): string | undefined }, key: string): string | undefined => bag.string(key);

export async function cmdConvert(args: string[]): Promise<number> {
  const { options, operands } = getopt(args, ':hf:O:B:Cco:l:S:pt:T:qnm:WUr:F:', [
    { name: 'help', arg: 'none', key: 'h' },
    { name: 'object', arg: 'required', key: 'object' },
    { name: 'image-opts', arg: 'none', key: 'image-opts' },
    { name: 'target-image-opts', arg: 'none', key: 'target-image-opts' },
    { name: 'salvage', arg: 'none', key: 'salvage' },
    { name: 'target-is-zero', arg: 'none', key: 'target-is-zero' },
    { name: 'bitmaps', arg: 'none', key: 'bitmaps' },
    { name: 'skip-broken-bitmaps', arg: 'none', key: 'skip-broken-bitmaps' },
    { name: 'force-share', arg: 'none', key: 'U' },
    { name: 'backing', arg: 'required', key: 'b' },
    { name: 'backing-format', arg: 'required', key: 'F' },
    { name: 'compress', arg: 'none', key: 'c' },
    { name: 'target-format', arg: 'required', key: 'O' },
    { name: 'source-format', arg: 'required', key: 'f' },
    { name: 'target-format-options', arg: 'required', key: 'o' },
    { name: 'no-create', arg: 'none', key: 'n' },
    { name: 'sparse-size', arg: 'required', key: 'S' },
    { name: 'parallel', arg: 'required', key: 'm' },
    { name: 'progress', arg: 'none', key: 'p' },
    { name: 'quiet', arg: 'none', key: 'q' },
    // Long names newer qemu-img gives these short options.
    { name: 'source-cache', arg: 'required', key: 'T' },
    { name: 'target-cache', arg: 'required', key: 't' },
    { name: 'rate-limit', arg: 'required', key: 'r' },
    { name: 'oob-writes', arg: 'none', key: 'W' },
    { name: 'copy-range-offloading', arg: 'none', key: 'C' },
    { name: 'snapshot', arg: 'required', key: 'l' },
  ]);
  let srcFmt: string | undefined;
  let outFmt = 'raw';
  let progress = false;
  let quiet = false;
  let noCreate = false;
  let sparseSize = 4096;
  let parallel = 8;
  let compress = false;
  let targetIsZero = false;
  let copyRange = false;
  let explicitSparse = false;
  let outOfOrder = false;
  let rateLimit = 0;
  let salvage = false;
  let skipBrokenBitmaps = false;
  let cache: string | undefined;
  let srcCache: string | undefined;
  let optText: string | undefined;
  let outBase: string | undefined;
  let outBaseFmt: string | undefined;
  for (const o of options) {
    const v = o.value ?? '';
    switch (o.key) {
      case 'h':
        out(convertHelp);
        return 0;
      case 'f':
        srcFmt = v;
        break;
      case 'O':
        outFmt = v;
        break;
      case 'c':
        compress = true;
        break;
      case 'p':
        progress = true;
        break;
      case 'q':
        quiet = true;
        break;
      case 'n':
        noCreate = true;
        break;
      case 'S': {
        const s = cvtnum('buffer size for sparse output', v, (t) => parseSize(t));
        if (s % SECTOR !== 0 || s > MAX_SPARSE) {
          throw new CliError(
            `Invalid buffer size for sparse output specified. Valid sizes are multiples of ${SECTOR} up to ${MAX_SPARSE}. Select 0 to disable sparse detection (fully allocates output).`,
          );
        }
        sparseSize = s;
        explicitSparse = true;
        break;
      }
      case 'm': {
        const n = /^[+-]?\d+$/.test(v) ? Number(v) : NaN;
        if (!(n >= 1 && n <= 16)) throw new CliError('Invalid number of coroutines. Allowed number of coroutines is between 1 and 16');
        parallel = n;
        break;
      }
      case 't':
        cache = v;
        break;
      case 'T':
        srcCache = v;
        break;
      case 'target-is-zero':
        targetIsZero = true;
        break;
      case 'B':
      case 'b':
        outBase = v;
        break;
      case 'F':
        outBaseFmt = v;
        break;
      case 'o':
        optText = accumulate(optText, v);
        break;
      case 'l':
        throw new CliError('Snapshots (-l) are not supported by convert yet');
      case 'image-opts':
      case 'target-image-opts':
        throw new CliError(`--${o.key} is not supported yet`);
      case 'object':
        throw new CliError('--object is not supported yet');
      case 'bitmaps':
        throw new CliError('--bitmaps is not supported by convert yet');
      case 'skip-broken-bitmaps':
        skipBrokenBitmaps = true;
        break;
      case 'C':
        // qemu tries copy offloading and falls back to an ordinary copy
        // wherever it cannot offload; qimg always takes that fallback, which
        // writes the same bytes. Only qemu's refusals below remain to honour.
        copyRange = true;
        break;
      case 'W':
        outOfOrder = true;
        break;
      case 'r':
        rateLimit = cvtnum('rate limit', v, (t) => parseSize(t));
        break;
      case 'salvage':
        salvage = true;
        break;
    }
  }
  // The combinations qemu-img refuses, in its order.
  if (compress && copyRange) throw new CliError('Cannot enable copy offloading when -c is used');
  if (explicitSparse && copyRange) throw new CliError('Cannot enable copy offloading when -S is used');
  if (copyRange && salvage) throw new CliError('Cannot use copy offloading in salvaging mode');
  if (noCreate && optText !== undefined) throw new CliError('-o has no effect when skipping image creation');
  if (targetIsZero && !noCreate) throw new CliError('--target-is-zero requires use of -n flag');
  if (skipBrokenBitmaps) throw new CliError('Use of --skip-broken-bitmaps requires --bitmaps');
  if (quiet) progress = false;
  if (optText !== undefined && hasHelpOption(optText)) {
    if (!['raw', 'qcow2', 'qed'].includes(outFmt)) throw new CliError(`Unknown file format '${outFmt}'`);
    out(optionHelp(outFmt, operands.length >= 2 ? operands[operands.length - 1] : undefined));
    return 0;
  }
  if (operands.length < 2) throw new CliError('Must specify image file name');
  // The sources are only read: a source cache mode changes no byte read, so -T is checked and honoured as is.
  if (srcCache !== undefined && parseCacheMode(srcCache) === undefined) throw new CliError(`Invalid source cache option: ${srcCache}`);
  const outPath = operands[operands.length - 1]!;
  const srcPaths = operands.slice(0, -1);
  if (outPath === '-') {
    const forceShare = options.some((o) => o.key === 'U');
    return convertToStdout({ srcPaths, srcFmt, forceShare, outFmt, compress, optText, sparseSize, parallel, progress, noCreate, outBase, rateLimit, salvage });
  }

  const meter = new Progress(progress, 1.0);
  meter.print(0, 100);
  const sources: Image[] = [];
  let storage: Storage | undefined;
  let image: Image | undefined;
  try {
    // -U shares the sources only: the target is written, so it is always locked.
    const forceShare = options.some((o) => o.key === 'U');
    for (const p of srcPaths) sources.push(await openCli(p, { format: srcFmt, forceShare }));
    const total = totalSize(sources);
    const isImageFmt = outFmt === 'qcow2' || outFmt === 'qed';
    let targetHasBacking = false;
    if (!noCreate) {
      if (outFmt !== 'raw' && !isImageFmt) throw new CliError(`Unknown file format '${outFmt}'`);
    }
    let bag;
    try {
      bag = parseCreateOptions(parseFormatName(outFmt) ?? 'raw', optText);
    } catch (e) {
      throw new CliError(messageOf(e), 1, { cause: e });
    }
    if (outBase !== undefined) {
      if (!isImageFmt) throw new CliError(`Backing file not supported for file format '${outFmt}'`);
      bag.set('backing_file', outBase);
    }
    if (outBaseFmt !== undefined) {
      if (!isImageFmt) throw new CliError(`Backing file format not supported for file format '${outFmt}'`);
      bag.set('backing_fmt', outBaseFmt);
    }
    if (bag.has('backing_file')) {
      targetHasBacking = true;
      // qemu-img 7.2 prints this and exits 0 without converting; exiting 1 keeps scripts from taking it for success.
      if (targetIsZero) throw new CliError('Cannot use --target-is-zero when the destination image has a backing file');
      if (srcPaths.length > 1) throw new CliError('Having a backing file for the target makes no sense when concatenating multiple input images');
      if (!bag.has('backing_fmt')) throw new CliError('Use of backing file requires explicit backing format');
    }
    if (compress) {
      if (outFmt !== 'qcow2') throw new CliError('Compression not supported for this file format');
      const enc = OptionBagPeek(bag, 'encryption') === 'on' || bag.has('encrypt.format');
      if (enc) throw new CliError('Compression and encryption not supported at the same time');
      const pre = OptionBagPeek(bag, 'preallocation');
      if (pre !== undefined && pre !== 'off') throw new CliError('Compression and preallocation not supported at the same time');
    }
    // qemu-img's default target cache mode is unsafe: flushes are skipped.
    const cacheMode = parseCacheMode(cache ?? 'unsafe');
    if (cacheMode === undefined) throw new CliError(`Invalid cache option: ${cache}`);
    const targetUnsafe = dropsFlushes(cacheMode);

    // Raw outputs too: -o preallocation (off, falloc, full) must take effect.
    if (!noCreate) {
      try {
        await createFormatted({ filename: outPath, fmt: outFmt, bag, size: total, printLine: false });
      } catch (e) {
        throw new CliError(`${outPath}: error while converting ${outFmt}: ${messageOf(e)}${e instanceof CreateError ? e.hint.replace(/\n$/, '') : ''}`, 1, { cause: e });
      }
    }

    let target: ConvertTarget;
    let clusterSize: number | undefined;
    if (isImageFmt) {
      try {
        image = await openImageFile(outPath, { format: outFmt as 'qcow2' | 'qed', writable: true, unsafe: targetUnsafe });
      } catch (e) {
        throw new CliError(`Could not open '${outPath}': ${messageOf(e)}`, 1, { cause: e });
      }
      if (noCreate && image.size < total) throw new CliError('output file is smaller than input file');
      target = imageTarget(image);
      if (compress) clusterSize = (await image.info())['cluster-size'];
    } else {
      try {
        storage = await FileStorage.open(outPath, { writable: true, unsafe: targetUnsafe, permissions: imagePermissions('raw', { writable: true }) });
      } catch (e) {
        throw new CliError(`Could not open '${outPath}': ${messageOf(e)}`, 1, { cause: e });
      }
      if (noCreate) {
        const outSize = Math.ceil((await storage.size()) / SECTOR) * SECTOR;
        if (outSize < total) throw new CliError('output file is smaller than input file');
      }
      target = storageTarget(storage);
    }

    if (flushesEachWrite(cacheMode)) target = writethroughTarget(target);
    if (rateLimit > 0) target = rateLimited(target, rateLimit);
    try {
      await convertImages(sources, target, {
        sparseSize,
        // Compression runs on worker threads and the libuv pool: keep every core busy.
        parallel: compress ? Math.max(parallel, 2 * availableParallelism()) : parallel,
        targetIsZero: !noCreate || targetIsZero,
        targetHasBacking,
        inOrder: !outOfOrder,
        salvage: salvage ? (offset, message) => {
          if (!quiet) err(`${PROG}: warning: error while reading offset ${offset}: ${message}\n`);
        } : undefined,
        compressClusterSize: clusterSize,
        progress: (pct) => meter.print(pct, 0),
      });
    } catch (e) {
      throw new CliError(e instanceof ConvertError ? e.message : `error while converting: ${messageOf(e)}`, 1, { cause: e });
    }
    // Closed here rather than in `finally`, whose errors are dropped: closing
    // writes the last metadata (and syncs unless cache=unsafe), so a failure
    // now means the output is incomplete and must not end in exit code 0.
    const closing = image ?? storage;
    image = storage = undefined;
    try {
      await closing?.close();
    } catch (e) {
      throw new CliError(`error while converting: ${messageOf(e)}`, 1, { cause: e });
    }
    meter.print(100, 0);
  } finally {
    meter.end();
    await storage?.close().catch(() => {});
    await image?.close().catch(() => {});
    for (const s of sources) await s.close().catch(() => {});
  }
  return 0;
}

