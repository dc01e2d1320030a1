/** qemu-img convert: raw targets are written as files, qcow2 and QED targets through Image. */
import { convertImageFile, isImageError, parseCacheMode, type InternalSnapshotRef } from '../../node.js';
import { checkImageOptsFormat, CliError, cvtnum, err, imageOperand, messageOf, namedAsGiven, openCli, out, PROG, Progress } from '../common.js';
import { shouldRerun } from '../legacy-provider.js';
import { ObjectStore } from '../objects.js';
import { getopt, parseSize } from '../options.js';
import { hasHelpOption, parseOptions, splitCompressionLevel } from '../../node.js';
import { convertToStdout } from './convert-stream.js';
import { accumulate, optionHelp } from './create.js';

export const convertHelp = `usage: qimg convert [--object objectdef] [--image-opts] [--target-image-opts] [-U] [-C] [-c] [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt] [-B backing_file [-F backing_fmt]] [-o options] [-l snapshot_param] [-S sparse_size] [-r rate_limit] [-m num_coroutines] [-W] [--salvage] [--target-is-zero] filename [filename2 [...]] output_filename

Copy one or more images (concatenated) into a new image.
  -f, --source-format=FMT  format of the source images; probed when absent
  -O, --target-format=FMT  output format: raw (default), qcow2 or qed
  -o, --target-format-options=OPTIONS  creation options of the output (-o help lists them);
                           with -c also compression_level=N (zlib 1-9, zstd 1-22 or negative;
                           default 6 and 3 as qemu), which qemu-img does not have
  -c, --compress           compress every data cluster (qcow2), on all cores
  -l, --snapshot=SNAPSHOT  read the (first) source as of an internal snapshot: an id or
                           name, or snapshot.id=ID[,snapshot.name=NAME]
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
  --bitmaps                copy the source's persistent dirty bitmaps (qcow2 to qcow2)
  --skip-broken-bitmaps    with --bitmaps: skip inconsistent (in-use) bitmaps, with a warning
  -t, --target-cache=CACHE output cache mode (default unsafe: no flush; writethrough,
                           directsync: flush after every write; none, writeback: flush at the end)
  -T, --source-cache=CACHE source cache mode (the sources are only read)
  -p, --progress           show progress
  -q, --quiet              print nothing
  -U, --force-share        read the sources even while another process writes them
                           (the output is always locked)  --object OBJDEF       secret,id=ID,data=STRING|file=PATH[,format=raw|base64]: a secret
                         that key-secret options name (the only object type)
  --image-opts          the file name is an option string: driver=FMT,file.filename=PATH,...
  --target-image-opts   the output name is an option string too (needs -n)
`;

const SECTOR = 512;
const MAX_SPARSE = 32768 * SECTOR;

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
  let imageOpts = false;
  let targetImageOpts = false;
  let outFmtGiven = false;
  const objects = new ObjectStore();
  let sourceSnapshot: InternalSnapshotRef | undefined;
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
  let bitmaps = false;
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
        outFmtGiven = true;
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
        sourceSnapshot = parseSnapshotParam(v);
        break;
      case 'image-opts':
        imageOpts = true;
        break;
      case 'target-image-opts':
        targetImageOpts = true;
        break;
      case 'object':
        if (objects.add(v)) return 0;
        break;
      case 'bitmaps':
        bitmaps = true;
        break;
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
  // compression_level (a qimg extension) is not a creation option, so -n may take it.
  if (noCreate && optText !== undefined && splitCompressionLevel(optText).options !== undefined) throw new CliError('-o has no effect when skipping image creation');
  if (targetIsZero && !noCreate) throw new CliError('--target-is-zero requires use of -n flag');
  if (skipBrokenBitmaps && !bitmaps) throw new CliError('Use of --skip-broken-bitmaps requires --bitmaps');
  if (targetImageOpts && !noCreate) throw new CliError('--target-image-opts requires use of -n flag');
  if (targetImageOpts && outFmtGiven) throw new CliError('--image-opts and --format are mutually exclusive');
  checkImageOptsFormat(imageOpts, srcFmt);
  if (quiet) progress = false;
  if (optText !== undefined && hasHelpOption(optText)) {
    if (!['raw', 'qcow2', 'qed'].includes(outFmt)) throw new CliError(`Unknown file format '${outFmt}'`);
    out(optionHelp(outFmt, operands.length >= 2 ? operands[operands.length - 1] : undefined));
    return 0;
  }
  if (operands.length < 2) throw new CliError('Must specify image file name');
  // The sources are only read: a source cache mode changes no byte read, so -T is checked and honoured as is.
  if (srcCache !== undefined && parseCacheMode(srcCache) === undefined) throw new CliError(`Invalid source cache option: ${srcCache}`);
  let outPath = operands[operands.length - 1]!;
  let srcPaths = operands.slice(0, -1);
  let sourceBlockOptions: Record<string, string> | undefined;
  let targetBlockOptions: Record<string, string> | undefined;
  if (imageOpts) {
    const targets = srcPaths.map((p) => imageOperand(p, undefined, { imageOpts, secrets: objects.secrets }));
    // One set of options and one format for all sources: the library call takes one.
    const [first] = targets;
    if (targets.some((t) => t.format !== first!.format || JSON.stringify(t.blockOptions) !== JSON.stringify(first!.blockOptions))) {
      throw new CliError('--image-opts sources with different drivers or options are not supported');
    }
    srcPaths = targets.map((t) => t.path);
    srcFmt = first!.format;
    sourceBlockOptions = first!.blockOptions;
  }
  if (targetImageOpts && outPath !== '-') {
    const t = imageOperand(outPath, undefined, { imageOpts: true, secrets: objects.secrets }, true);
    outPath = t.path;
    // qemu opens the target with the driver named, or probes it.
    if (t.format === undefined) throw new CliError(`Could not open '${operands[operands.length - 1]}': qimg does not probe a --target-image-opts target: name its driver`);
    outFmt = t.format;
    targetBlockOptions = t.blockOptions;
  }
  if (outPath === '-') {
    const forceShare = options.some((o) => o.key === 'U');
    return convertToStdout({ srcPaths, srcFmt, forceShare, outFmt, compress, optText, sparseSize, parallel, progress, noCreate, outBase, rateLimit, salvage });
  }

  const meter = new Progress(progress, 1.0);
  meter.print(0, 100);
  let rerun = false;
  try {
    try {
      // Under --image-opts / --target-image-opts qemu names an image by its option string.
      const given = (i: number, path: string): [string, string] => [(i < 0 ? targetImageOpts : imageOpts) ? operands.at(i)! : path, path];
      const run = (): Promise<void> => convertImageFile(srcPaths, outPath, {
        format: outFmt,
        sourceFormat: srcFmt,
        sourceSnapshot,
        secrets: objects.secrets,
        sourceBlockOptions,
        targetBlockOptions,
        options: optText,
        backingFile: outBase,
        backingFormat: outBaseFmt,
        compress,
        noCreate,
        targetIsZero,
        sparseSize,
        parallel,
        inOrder: !outOfOrder,
        rateLimit,
        salvage: salvage
          ? (offset, message) => {
              if (!quiet) err(`${PROG}: warning: error while reading offset ${offset}: ${message}\n`);
            }
          : undefined,
        cache: cache ?? 'unsafe',
        // -U shares the sources only: the target is written, so it is always locked.
        forceShare: options.some((o) => o.key === 'U'),
        onPercent: (pct) => meter.print(pct, 0),
        bitmaps,
        skipBrokenBitmaps,
        onWarning: (m) => err(`${PROG}: warning: ${m}\n`),
      });
      const named = (): Promise<void> => (srcPaths.length === 1 ? namedAsGiven(...given(0, srcPaths[0]!), run) : run());
      await (targetImageOpts ? namedAsGiven(...given(-1, outPath), named) : named());
    } catch (e) {
      // The rerun draws the meter again: this run leaves its line unfinished.
      rerun = shouldRerun(e);
      if (isImageError(e)) throw new CliError(e.hint ? `${e.message}\n${e.hint}` : e.message, 1, { cause: e });
      throw e;
    }
    meter.print(100, 0);
  } finally {
    if (!rerun) meter.end();
  }
  return 0;
}


/**
 * -l's argument: `snapshot.id=ID,snapshot.name=NAME` (either or both), or
 * a bare id or name, as qemu-img convert reads it.
 */
function parseSnapshotParam(text: string): InternalSnapshotRef {
  if (!text.startsWith('snapshot.')) return text;
  const ref: { id?: string; name?: string } = {};
  for (const [key, value] of parseOptions(text).entries) {
    if (key === 'snapshot.id') ref.id = value;
    else if (key === 'snapshot.name') ref.name = value;
    else {
      err(`${PROG}: Invalid parameter '${key}'\n`);
      throw new CliError(`Failed in parsing snapshot param '${text}'`);
    }
  }
  return ref;
}
