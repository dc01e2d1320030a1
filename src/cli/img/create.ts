/**
 * qemu-img create, and the image creation convert shares with it: option
 * lists checked as qemu_opts_do_parse does, the backing file opened to learn
 * its size and format, the "Formatting ..." line, then the format's create.
 */
import { OptionBag, parseOptionList } from '../../block/options.js';
import { CREATE_PERMISSIONS } from '../../block/perms.js';
import { isImageError } from '../../errors.js';
import { createQcow2, parseQcow2CreateOptions, qcow2CreateLine } from '../../formats/qcow2/create.js';
import { createQed, qedCreateLine } from '../../formats/qed/create.js';
import { FileStorage, nodeCodecs, openImageFile, resolveImplicitPath } from '../../node.js';
import type { Storage } from '../../io/storage.js';
import { parseFormatName } from '../../block/probe.js';
import { CliError, err, messageOf, out, PROG, strerror } from '../common.js';
import { getopt, parseSize, UsageError } from '../options.js';

export const createHelp = `usage: qimg create [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] filename [size]

Create a new image.
  -f, --format=FMT          raw (default), qcow2 or qed
  -o, --options=OPTIONS     creation options (-o help lists them)
  -b, --backing=FILE        backing file; its size is used when SIZE is absent
  -F, -B, --backing-format  format of the backing file (required with -b)
  -u, --backing-unsafe      do not open the backing file
  -q, --quiet               do not print the Formatting line
`;

type OptType = 'size' | 'str' | 'bool' | 'num';
interface OptDesc {
  name: string;
  type: OptType;
  help: string;
}

const d = (name: string, type: OptType, help: string): OptDesc => ({ name, type, help });

/** The file protocol's create options, in the order qemu prints them on the Formatting line. */
const FILE_OPTS: OptDesc[] = [
  d('size', 'size', 'Virtual disk size'),
  d('nocow', 'bool', 'Turn off copy-on-write (valid only on btrfs)'),
  d('preallocation', 'str', 'Preallocation mode (allowed values: off, falloc, full)'),
  d('extent_size_hint', 'size', 'Extent size hint for the image file, 0 to disable'),
];

const RAW_OPTS: OptDesc[] = [d('size', 'size', 'Virtual disk size')];

const QED_OPTS: OptDesc[] = [
  d('size', 'size', 'Virtual disk size'),
  d('backing_file', 'str', 'File name of a base image'),
  d('backing_fmt', 'str', 'Image format of the base image'),
  d('cluster_size', 'size', 'Cluster size (in bytes)'),
  d('table_size', 'size', 'L1/L2 table size (in clusters)'),
];

/** qcow2's create options in qemu's Formatting-line order. */
const QCOW2_OPTS: OptDesc[] = [
  d('encryption', 'bool', "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)"),
  d('encrypt.format', 'str', "Encrypt the image, format choices: 'aes', 'luks'"),
  d('encrypt.key-secret', 'str', 'ID of secret providing qcow AES key or LUKS passphrase'),
  d('encrypt.cipher-alg', 'str', 'Name of encryption cipher algorithm'),
  d('encrypt.cipher-mode', 'str', 'Name of encryption cipher mode'),
  d('encrypt.ivgen-alg', 'str', 'Name of IV generator algorithm'),
  d('encrypt.ivgen-hash-alg', 'str', 'Name of IV generator hash algorithm'),
  d('encrypt.hash-alg', 'str', 'Name of encryption hash algorithm'),
  d('encrypt.iter-time', 'num', 'Time to spend in PBKDF in milliseconds'),
  d('cluster_size', 'size', 'qcow2 cluster size'),
  d('extended_l2', 'bool', 'Extended L2 tables'),
  d('preallocation', 'str', 'Preallocation mode (allowed values: off, metadata, falloc, full)'),
  d('compression_type', 'str', 'Compression method used for image cluster compression'),
  d('size', 'size', 'Virtual disk size'),
  d('compat', 'str', 'Compatibility level (v2 [0.10] or v3 [1.1])'),
  d('backing_file', 'str', 'File name of a base image'),
  d('backing_fmt', 'str', 'Image format of the base image'),
  d('data_file', 'str', 'File name of an external data file'),
  d('data_file_raw', 'bool', 'The external data file must stay valid as a raw image'),
  d('lazy_refcounts', 'bool', 'Postpone refcount updates'),
  d('refcount_bits', 'num', 'Width of a reference count entry in bits'),
];

/** Defaults qemu prints on the Formatting line even when not given. */
const QCOW2_DEFAULTS: Record<string, string> = {
  cluster_size: '65536',
  extended_l2: 'off',
  compression_type: 'zlib',
  lazy_refcounts: 'off',
  refcount_bits: '16',
};

const FORMAT_OPTS: Record<string, OptDesc[]> = { raw: RAW_OPTS, qcow2: QCOW2_OPTS, qed: QED_OPTS };

/** Format options followed by the protocol's, duplicates dropped (qemu_opts_append). */
function mergedOpts(fmt: string): OptDesc[] {
  const list = [...FORMAT_OPTS[fmt]!];
  for (const o of FILE_OPTS) if (!list.some((x) => x.name === o.name)) list.push(o);
  return list;
}

const TYPE_HINT: Record<OptType, string> = { size: '<size>', str: '<str>', bool: '<bool (on/off)>', num: '<num>' };

/** print_block_option_help: the sorted option list, with the protocol's when a file is named. */
export function optionHelp(fmt: string, filename: string | undefined): string {
  const list = filename === undefined ? FORMAT_OPTS[fmt]! : mergedOpts(fmt);
  const sorted = [...list].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  let s = filename === undefined ? `Supported ${fmt} options:\n` : 'Supported options:\n';
  for (const o of sorted) s += `  ${(o.name + '=' + TYPE_HINT[o.type]).padEnd(22)} - ${o.help}\n`;
  if (filename === undefined) s += '\nThe protocol level may support further options.\nSpecify the target filename to include those options.\n';
  return s;
}

/** has_help_option: "help" or "?" as one item of the list. */
export function hasHelpOption(text: string): boolean {
  try {
    return parseOptionList(text).some(([k, v]) => v === 'on' && (k === 'help' || k === '?'));
  } catch {
    return false;
  }
}

/** Several -o options are joined with a comma, as qemu-img's accumulate_options does. */
export const accumulate = (prev: string | undefined, next: string): string => (prev === undefined ? next : `${prev},${next}`);

/**
 * qemu_opts_do_parse for a format's merged option list: unknown keys and
 * badly typed values are refused before anything is printed. Returns the
 * bag of given options.
 */
export function parseCreateOptions(fmt: string, text: string | undefined): OptionBag {
  const bag = OptionBag.parse(text);
  const descs = mergedOpts(fmt);
  const check = OptionBag.parse(text);
  for (const o of descs) {
    if (!check.has(o.name)) continue;
    if (o.type === 'size') check.size(o.name);
    else if (o.type === 'bool') check.bool(o.name, false);
    else if (o.type === 'num') check.number(o.name, 0);
    else check.string(o.name);
  }
  check.assertAllUsed();
  return bag;
}

/** A value as qemu_opts_print shows it: sizes and numbers normalised, commas doubled. */
function printValue(o: OptDesc, v: string): string {
  if (o.type === 'size') return String(parseSize(v) ?? v);
  if (o.type === 'num') return String(Number(v));
  return v.replaceAll(',', ',,');
}

/** The Formatting line straight from the option list (used where a format's own builder cannot run). */
function genericLine(fmt: string, filename: string, bag: OptionBag): string {
  const parts: string[] = [];
  for (const o of mergedOpts(fmt)) {
    const v = bagValue(bag, o.name) ?? (fmt === 'qcow2' ? QCOW2_DEFAULTS[o.name] : fmt === 'qed' && o.name === 'cluster_size' ? '65536' : undefined);
    if (v !== undefined) parts.push(`${o.name}=${printValue(o, v)}`);
  }
  return `Formatting '${filename}', fmt=${fmt} ${parts.join(' ')}`;
}

/** A value by name; keys were checked by parseCreateOptions, so marking it used hides nothing. */
const bagValue = (bag: OptionBag, key: string): string | undefined => bag.string(key);

/** The protocol options a format's own parser does not know: printed after its line. */
function takeFileOpts(bag: OptionBag, names: string[]): string {
  let s = '';
  for (const n of names) {
    const o = FILE_OPTS.find((x) => x.name === n)!;
    const v = bag.string(n);
    if (v !== undefined) s += ` ${n}=${printValue(o, v)}`;
  }
  return s;
}

/** A failure inside creation: printed as "FILE: message" by create, "FILE: error while converting FMT: message" by convert. */
export class CreateError extends Error {
  /** Text after the message (qemu's error hints), printed as is. */
  readonly hint: string;
  constructor(message: string, hint = '') {
    super(message);
    this.hint = hint;
  }
}

async function openTarget(filename: string): Promise<FileStorage> {
  try {
    return await FileStorage.open(filename, { writable: true, create: true, truncate: true, permissions: CREATE_PERMISSIONS });
  } catch (e) {
    if (isImageError(e, 'locked')) throw new CreateError(e.message);
    throw new CreateError(`Could not create '${filename}': ${strerror((e as { cause?: unknown }).cause ?? e)}`);
  }
}

const ZERO_CHUNK = 1 << 20;

async function createRaw(filename: string, bag: OptionBag, size: number): Promise<void> {
  const prealloc = bag.string('preallocation') ?? 'off';
  bag.string('nocow');
  bag.string('extent_size_hint');
  if (prealloc === 'metadata') throw new CreateError('Unsupported preallocation mode: metadata');
  if (prealloc !== 'off' && prealloc !== 'falloc' && prealloc !== 'full') throw new CreateError(`invalid parameter value: ${prealloc}`);
  const st = await openTarget(filename);
  try {
    const total = Math.ceil(size / 512) * 512;
    await st.truncate(0);
    if (prealloc === 'off') {
      await st.truncate(total);
    } else {
      // Node has no fallocate(): both modes allocate by writing zeros.
      const zeros = new Uint8Array(Math.min(ZERO_CHUNK, total));
      try {
        for (let p = 0; p < total; p += zeros.length) await st.write(zeros.subarray(0, Math.min(zeros.length, total - p)), p);
        await st.flush();
      } catch (e) {
        // file-posix's words for the two modes.
        const what = prealloc === 'full' ? 'Could not write zeros for preallocation' : 'Could not preallocate data for the new file';
        throw new CreateError(`${what}: ${strerror(e)}`);
      }
    }
  } finally {
    await st.close();
  }
}

export interface CreateRequest {
  filename: string;
  fmt: string;
  /** Options as given with -o (already checked by parseCreateOptions). */
  bag: OptionBag;
  size?: number;
  /** Print the Formatting line (create without -q). */
  printLine: boolean;
}

/**
 * The format's create step (bdrv_create): the Formatting line, the
 * format's checks, then the file. `bag` holds size, backing_file and
 * backing_fmt by now.
 */
export async function createFormatted(req: CreateRequest & { size: number }): Promise<void> {
  const { filename, fmt, bag, size } = req;
  bag.set('size', String(size));
  const print = (line: string): void => {
    if (req.printLine) out(line + '\n');
  };
  const wrap = async (f: () => Promise<void>): Promise<void> => {
    try {
      await f();
    } catch (e) {
      if (e instanceof CreateError) throw e;
      throw new CreateError(messageOf(e));
    }
  };
  switch (fmt) {
    case 'raw':
      print(genericLine('raw', filename, bag));
      return wrap(() => createRaw(filename, bag, size));
    case 'qed': {
      const tail = takeFileOpts(bag, ['nocow', 'preallocation', 'extent_size_hint']);
      const opts = {
        size,
        clusterSize: bag.size('cluster_size') ?? undefined,
        tableSize: bag.size('table_size'),
        backingFile: bag.string('backing_file'),
        backingFmt: bag.string('backing_fmt'),
      };
      print(qedCreateLine(filename, opts) + tail);
      return wrap(async () => {
        const st = await openTarget(filename);
        try {
          await createQed(st, opts);
        } finally {
          await st.close();
        }
      });
    }
    case 'qcow2': {
      let parsed: ReturnType<typeof parseQcow2CreateOptions>;
      const line = genericLine('qcow2', filename, bag);
      const tail = takeFileOpts(bag, ['nocow', 'extent_size_hint']);
      try {
        parsed = parseQcow2CreateOptions(bag);
      } catch (e) {
        print(line);
        throw new CreateError(messageOf(e));
      }
      print(qcow2CreateLine(filename, parsed, size) + tail);
      // qemu maps compat onto its 'version' enum (v2/v3, or the aliases 0.10/1.1).
      const compat = (parsed as { compat?: string }).compat;
      if (compat === 'v2' || compat === '0.10') parsed.version = 2;
      else if (compat !== undefined && compat !== 'v3' && compat !== '1.1') throw new CreateError(`Parameter 'version' does not accept value '${compat}'`);
      return wrap(async () => {
        const st = await openTarget(filename);
        try {
          await createQcow2(st, { ...parsed, size }, {
            codecs: nodeCodecs,
            openDataFile: async (name) => {
              try {
                return await FileStorage.open(name, { writable: true, create: true, truncate: true, permissions: CREATE_PERMISSIONS });
              } catch (e) {
                if (isImageError(e, 'locked')) throw new CreateError(e.message);
                throw new CreateError(`Could not create '${name}': ${strerror((e as { cause?: unknown }).cause ?? e)}`);
              }
            },
          });
        } finally {
          await st.close();
        }
      });
    }
    default:
      throw new CreateError(`Unknown file format '${fmt}'`);
  }
}

const MAX_IMAGE_SIZE = '9223372036854775807';

export async function cmdCreate(args: string[]): Promise<number> {
  const { options, operands } = getopt(args, ':F:B:b:f:ho:qu', [
    { name: 'help', arg: 'none', key: 'h' },
    { name: 'object', arg: 'required', key: 'object' },
    { name: 'format', arg: 'required', key: 'f' },
    { name: 'options', arg: 'required', key: 'o' },
    { name: 'backing', arg: 'required', key: 'b' },
    { name: 'backing-format', arg: 'required', key: 'F' },
    { name: 'backing-unsafe', arg: 'none', key: 'u' },
    { name: 'quiet', arg: 'none', key: 'q' },
  ]);
  let fmt = 'raw';
  let baseFilename: string | undefined;
  let baseFmt: string | undefined;
  let optText: string | undefined;
  let quiet = false;
  let unsafe = false;
  for (const o of options) {
    const v = o.value ?? '';
    switch (o.key) {
      case 'h':
        out(createHelp);
        return 0;
      case 'F':
      case 'B':
        baseFmt = v;
        break;
      case 'b':
        baseFilename = v;
        break;
      case 'f':
        fmt = v;
        break;
      case 'o':
        optText = accumulate(optText, v);
        break;
      case 'q':
        quiet = true;
        break;
      case 'u':
        unsafe = true;
        break;
      case 'object':
        throw new CliError('--object is not supported yet');
    }
  }
  const filename = operands[0];
  if (optText !== undefined && hasHelpOption(optText)) {
    if (!FORMAT_OPTS[fmt]) throw new CliError(`Unknown file format '${fmt}'`);
    out(optionHelp(fmt, filename));
    return 0;
  }
  if (filename === undefined) throw new UsageError('Expecting image file name');
  let size: number | undefined;
  if (operands.length > 1) {
    const text = operands[1]!;
    const v = parseSize(text);
    if (v === undefined) {
      const n = /^\s*-?\d+$/.test(text) ? Number(text) : NaN;
      if (Number.isFinite(n) && n > 0) throw new CliError(`Invalid image size specified. Must be between 0 and ${MAX_IMAGE_SIZE}.`);
      throw new CliError(
        `Invalid image size specified. You may use k, M, G, T, P or E suffixes for\n${PROG}: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.`,
      );
    }
    size = v;
  }
  if (operands.length > 2) throw new UsageError(`Unexpected argument: ${operands[2]}`);

  try {
    await imgCreate({ filename, fmt, optText, size, baseFilename, baseFmt, unsafe, quiet });
  } catch (e) {
    if (e instanceof CreateError) {
      err(`${PROG}: ${filename}: ${e.message}\n${e.hint}`);
      return 1;
    }
    if (e instanceof CliError || e instanceof UsageError) throw e;
    err(`${PROG}: ${filename}: ${messageOf(e)}\n`);
    return 1;
  }
  return 0;
}

/** bdrv_img_create. */
async function imgCreate(r: {
  filename: string;
  fmt: string;
  optText?: string;
  size?: number;
  baseFilename?: string;
  baseFmt?: string;
  unsafe: boolean;
  quiet: boolean;
}): Promise<void> {
  if (!FORMAT_OPTS[r.fmt]) throw new CreateError(`Unknown file format '${r.fmt}'`);
  let bag: OptionBag;
  try {
    bag = parseCreateOptions(r.fmt, r.optText);
  } catch (e) {
    throw new CreateError(messageOf(e));
  }
  if (bag.has('size') && r.size !== undefined) throw new CreateError('The image size must be specified only once');
  const hasBacking = r.fmt !== 'raw';
  if (r.baseFilename !== undefined) {
    if (!hasBacking) throw new CreateError(`Backing file not supported for file format '${r.fmt}'`);
    bag.set('backing_file', r.baseFilename);
  }
  if (r.baseFmt !== undefined) {
    if (!hasBacking) throw new CreateError(`Backing file format not supported for file format '${r.fmt}'`);
    bag.set('backing_fmt', r.baseFmt);
  }
  const backingFile = bagValue(bag, 'backing_file');
  if (backingFile !== undefined) {
    if (backingFile === r.filename) throw new CreateError('Error: Trying to create an image with the same filename as the backing file');
    if (backingFile === '') throw new CreateError('Expected backing file name, got empty string');
  }
  const backingFmt = bagValue(bag, 'backing_fmt');
  let size = bag.has('size') ? bag.size('size') : r.size;
  if (backingFile !== undefined && !r.unsafe) {
    const full = resolveImplicitPath(r.filename, backingFile);
    let detected: string;
    let backingSize: number;
    try {
      const fmt = backingFmt === undefined ? undefined : parseFormatName(backingFmt);
      if (backingFmt !== undefined && fmt === undefined) throw new Error(`Unknown driver '${backingFmt}'`);
      // As qemu: the backing file is only looked at, so it may be in use (a live snapshot).
      const img = await openImageFile(full, { format: fmt, forceShare: true, metadataOnly: true });
      detected = img.format;
      backingSize = img.size;
      await img.close();
    } catch (e) {
      throw new CreateError(backingOpenMessage(e, full, backingFmt), 'Could not open backing image.\n');
    }
    if (backingFmt === undefined) throw new CreateError('Backing file specified without backing format', `Detected format of ${detected}.`);
    size ??= backingSize;
  } else if (backingFile !== undefined && backingFmt === undefined) {
    throw new CreateError('Backing file specified without backing format');
  }
  if (size === undefined) throw new CreateError('Image creation needs a size parameter');
  await createFormatted({ filename: r.filename, fmt: r.fmt, bag, size, printLine: !r.quiet });
}

/** qemu's wording when a backing file opened with a named driver is not of that format. */
function backingOpenMessage(e: unknown, path: string, fmt: string | undefined): string {
  const msg = messageOf(e);
  if (fmt === 'qed' && isImageError(e, 'invalid')) return 'Image not in QED format';
  if (fmt === 'qcow2' && isImageError(e, 'invalid')) return 'Image is not in qcow2 format';
  if (msg.startsWith('Could not open')) return msg;
  return msg.includes(path) || fmt !== undefined ? msg : `Could not open '${path}': ${msg}`;
}
