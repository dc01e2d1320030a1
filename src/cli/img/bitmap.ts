/**
 * qemu-img bitmap: add, remove, clear, enable, disable and merge persistent
 * dirty bitmaps of a qcow2 image, in the order given, with qemu-img 7.2's
 * checks, messages and exit codes.
 */
import {
  addBitmap,
  clearBitmap,
  disableBitmap,
  enableBitmap,
  isImageError,
  mergeBitmap,
  removeBitmap,
  type Image,
} from '../../node.js';
import { checkImageOptsFormat, CliError, cvtnum, err, messageOf, openCli, out, PROG, probedRawWarning } from '../common.js';
import { ObjectStore } from '../objects.js';
import { getopt, parseSize } from '../options.js';

export const bitmapHelp = `usage: qimg bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)... [-b source_file [-F source_fmt]] [-g granularity] [--object objectdef] [--image-opts | -f fmt] filename bitmap

Change the persistent dirty bitmaps of a qcow2 image; the operations run in
the order given, and stop at the first that fails.
  --add                  add bitmap (enabled, unless --disable follows)
  --remove               remove bitmap
  --clear                clear every bit of bitmap
  --enable, --disable    make bitmap track writes, or stop it tracking them
  --merge SOURCE         OR bitmap SOURCE into bitmap
  -b SOURCE_FILE         the image holding SOURCE (with --merge; default: filename)
  -F SOURCE_FMT          format of SOURCE_FILE (qcow2); probed when absent
  -g GRANULARITY         bytes per bit of an added bitmap (power of 2, >= 512; with --add)
  -f, --format=FMT       image format; probed when absent  --object OBJDEF       secret,id=ID,data=STRING|file=PATH[,format=raw|base64]: a secret
                         that key-secret options name (the only object type)
  --image-opts          the file name is an option string: driver=FMT,file.filename=PATH,...
`;

type Action = { op: 'add' | 'remove' | 'clear' | 'enable' | 'disable' } | { op: 'merge'; source: string };

const SUFFIX_SHIFT: Record<string, bigint> = { k: 10n, m: 20n, g: 30n, t: 40n, p: 50n, e: 60n };

/** -g as qemu's cvtnum reads it, exact past 2^53 (sizes up to 2^63 - 1 are accepted). */
function parseGranularity(text: string): bigint {
  const m = /^(\d+)([kKmMgGtTpPeE]?)$/.exec(text.trim());
  if (m) return BigInt(m[1]!) << (m[2] ? SUFFIX_SHIFT[m[2].toLowerCase()]! : 0n);
  return BigInt(cvtnum('granularity', text, (t) => parseSize(t), 0, Infinity));
}

export async function cmdBitmap(args: string[]): Promise<number> {
  const { options, operands } = getopt(args, ':b:f:F:g:h', [
    { name: 'help', arg: 'none', key: 'h' },
    { name: 'object', arg: 'required', key: 'object' },
    { name: 'image-opts', arg: 'none', key: 'image-opts' },
    { name: 'add', arg: 'none', key: 'add' },
    { name: 'remove', arg: 'none', key: 'remove' },
    { name: 'clear', arg: 'none', key: 'clear' },
    { name: 'enable', arg: 'none', key: 'enable' },
    { name: 'disable', arg: 'none', key: 'disable' },
    { name: 'merge', arg: 'required', key: 'merge' },
  ]);
  const actions: Action[] = [];
  let format: string | undefined;
  let srcFile: string | undefined;
  let srcFmt: string | undefined;
  let granularity: number | undefined;
  let adding = false;
  let merging = false;
  let imageOpts = false;
  const objects = new ObjectStore();
  for (const o of options) {
    const v = o.value ?? '';
    switch (o.key) {
      case 'h':
        out(bitmapHelp);
        return 0;
      case 'b':
        srcFile = v;
        break;
      case 'f':
        format = v;
        break;
      case 'F':
        srcFmt = v;
        break;
      case 'g': {
        const n = parseGranularity(v);
        if (n >= 2n ** 63n) throw new CliError('Invalid granularity specified. Must be between 0 and 9223372036854775807.');
        // 0 means the default; qemu passes any other value on as a 32-bit one.
        granularity = n === 0n ? undefined : Number(n % 2n ** 32n);
        break;
      }
      case 'add':
      case 'remove':
      case 'clear':
      case 'enable':
        actions.push({ op: o.key });
        if (o.key === 'add') adding = true;
        break;
      case 'disable':
        actions.push({ op: 'disable' });
        break;
      case 'merge':
        actions.push({ op: 'merge', source: v });
        merging = true;
        break;
      case 'object':
        if (objects.add(o.value!)) return 0;
        break;
      case 'image-opts':
        imageOpts = true;
        break;
      default:
        break;
    }
  }
  if (actions.length === 0) throw new CliError('Need at least one of --add, --remove, --clear, --enable, --disable, or --merge');
  if (granularity !== undefined && !adding) throw new CliError('granularity only supported with --add');
  if (srcFmt !== undefined && srcFile === undefined) throw new CliError('-F only supported with -b');
  if (srcFile !== undefined && !merging) throw new CliError('Merge bitmap source file only supported with --merge');
  if (operands.length !== 2) throw new CliError('Expecting filename and bitmap name');
  const [path, name] = operands as [string, string];

  // No backing chain: bitmaps are changed without reference to the contents.
  checkImageOptsFormat(imageOpts, format);
  const image = await openCli(path, { format, backing: false, writable: true, imageOpts, secrets: objects.secrets });
  if (format === undefined && !imageOpts && image.format === 'raw') err(probedRawWarning(path));
  let source: Image | undefined;
  try {
    if (srcFile !== undefined) source = await openCli(srcFile, { format: srcFmt, backing: false, imageOpts, secrets: objects.secrets });
    for (const a of actions) {
      try {
        await run(image, name, a, { granularity, source });
      } catch (e) {
        if (!isImageError(e)) throw e;
        err(`${PROG}: Operation ${a.op} on bitmap ${name} failed: ${e.message}\n`);
        if (e.hint) err(`${e.hint}\n`);
        return 1;
      }
    }
    return 0;
  } finally {
    await closeQuietly(source);
    await closeQuietly(image);
  }
}

async function run(image: Image, name: string, a: Action, o: { granularity: number | undefined; source: Image | undefined }): Promise<void> {
  switch (a.op) {
    case 'add':
      return addBitmap(image, name, { granularity: o.granularity });
    case 'remove':
      return removeBitmap(image, name);
    case 'clear':
      return clearBitmap(image, name);
    case 'enable':
      return enableBitmap(image, name);
    case 'disable':
      return disableBitmap(image, name);
    case 'merge':
      return mergeBitmap(image, name, a.source, { from: o.source });
  }
}

async function closeQuietly(img: Image | undefined): Promise<void> {
  if (!img) return;
  try {
    await img.close();
  } catch (e) {
    err(`${PROG}: ${messageOf(e)}\n`);
  }
}
