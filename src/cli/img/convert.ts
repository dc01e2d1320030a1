/** qemu-img convert with a raw target (image targets plug in through ConvertTarget). */
import type { Image } from '../../block/image.js';
import { FileStorage } from '../../io/file.js';
import type { Storage } from '../../io/storage.js';
import { convertImages, ConvertError, totalSize, type ConvertTarget } from '../../ops/convert.js';
import { CliError, cvtnum, messageOf, openCli, out, Progress, strerror, validCache } from '../common.js';
import { getopt, parseSize } from '../options.js';

export const convertHelp = `usage: qimg convert [-U] [-c] [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt] [-o options] [-S sparse_size] [-m num_coroutines] [-W] filename [filename2 [...]] output_filename

Copy one or more images (concatenated) into a new image.
  -f, --source-format=FMT  format of the source images; probed when absent
  -O, --target-format=FMT  output format (default raw; only raw is written today)
  -n, --no-create          write into an existing output file, which must be large enough
  -S, --sparse-size=SIZE   zero detection granularity (default 4k, 0 = fully allocate)
  -m, --parallel=N         requests in flight, 1..16 (default 8)
  -W, --oob-writes         allow out-of-order writes
  -p, --progress           show progress
  -q, --quiet              print nothing
  -t, -T CACHE             target/source cache mode (accepted for compatibility)
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
  let cache: string | undefined;
  let srcCache: string | undefined;
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
      case 'F':
        throw new CliError('Backing files for the output are not supported by convert yet');
      case 'l':
        throw new CliError('Snapshots (-l) are not supported by convert yet');
      case 'image-opts':
      case 'target-image-opts':
        throw new CliError(`--${o.key} is not supported yet`);
      case 'object':
        throw new CliError('--object is not supported yet');
      case 'bitmaps':
        throw new CliError('--bitmaps is not supported by convert yet');
      // -C, -W, -U, -r, -o, --salvage: accepted; they do not change a raw copy's result.
    }
  }
  if (quiet) progress = false;
  if (operands.length < 2) throw new CliError('Must specify image file name');
  if (targetIsZero && !noCreate) throw new CliError('--target-is-zero requires use of -n flag');
  if (srcCache !== undefined && !validCache(srcCache)) throw new CliError(`Invalid source cache option: ${srcCache}`);
  const outPath = operands[operands.length - 1]!;
  const srcPaths = operands.slice(0, -1);

  const meter = new Progress(progress, 1.0);
  meter.print(0, 100);
  const sources: Image[] = [];
  let storage: Storage | undefined;
  try {
    for (const p of srcPaths) sources.push(await openCli(p, { format: srcFmt }));
    if (outFmt === 'qcow2' || outFmt === 'qed') throw new CliError(`Output format '${outFmt}' is not supported by convert yet`);
    if (outFmt !== 'raw') throw new CliError(`Unknown file format '${outFmt}'`);
    if (compress) throw new CliError('Compression not supported for this file format');
    if (cache !== undefined && !validCache(cache)) throw new CliError(`Invalid cache option: ${cache}`);
    const total = totalSize(sources);

    if (noCreate) {
      try {
        storage = await FileStorage.open(outPath, { writable: true });
      } catch (e) {
        throw new CliError(`Could not open '${outPath}': ${messageOf(e)}`, 1, { cause: e });
      }
      const outSize = Math.ceil((await storage.size()) / SECTOR) * SECTOR;
      if (outSize < total) throw new CliError('output file is smaller than input file');
    } else {
      try {
        storage = await FileStorage.open(outPath, { writable: true, create: true, truncate: true });
        await storage.truncate(total);
      } catch (e) {
        throw new CliError(`${outPath}: error while converting ${outFmt}: Could not create '${outPath}': ${strerror((e as { cause?: unknown }).cause ?? e)}`, 1, { cause: e });
      }
    }

    try {
      await convertImages(sources, storageTarget(storage), {
        sparseSize,
        parallel,
        targetIsZero: !noCreate || targetIsZero,
        progress: (pct) => meter.print(pct, 0),
      });
    } catch (e) {
      throw new CliError(e instanceof ConvertError ? e.message : `error while converting: ${messageOf(e)}`, 1, { cause: e });
    }
    meter.print(100, 0);
  } finally {
    meter.end();
    await storage?.close().catch(() => {});
    for (const s of sources) await s.close().catch(() => {});
  }
  return 0;
}

