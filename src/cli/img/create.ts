/**
 * qemu-img create: argument parsing and printing around the library's
 * createImageOn (qemu's bdrv_img_create): option lists checked as
 * qemu_opts_do_parse does, the backing file opened to learn its size and
 * format, the "Formatting ..." line, then the format's create.
 */
import { createImageOn, createOptionHelp, findFormat, hasHelpOption, isImageError, nodeHost, parseCreateOptions, type OptionBag } from '../../node.js';
import { CliError, err, messageOf, out, PROG } from '../common.js';
import { shouldRerun } from '../legacy-provider.js';
import { ObjectStore } from '../objects.js';
import { getopt, parseSize, UsageError } from '../options.js';

export const createHelp = `usage: qimg create [--object objectdef] [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] filename [size]

Create a new image.
  -f, --format=FMT          raw (default), qcow2 or qed
  -o, --options=OPTIONS     creation options (-o help lists them)
  -b, --backing=FILE        backing file; its size is used when SIZE is absent
  -F, -B, --backing-format  format of the backing file (required with -b)
  -u, --backing-unsafe      do not open the backing file
  -q, --quiet               do not print the Formatting line  --object OBJDEF       secret,id=ID,data=STRING|file=PATH[,format=raw|base64]: a secret
                         that key-secret options name (the only object type)
`;

/** Several -o options are joined with a comma, as qemu-img's accumulate_options does. */
export const accumulate = (prev: string | undefined, next: string): string => (prev === undefined ? next : `${prev},${next}`);

/** print_block_option_help: the sorted option list, with the protocol's when a file is named. */
export function optionHelp(fmt: string, filename: string | undefined): string {
  return createOptionHelp(fmt, filename !== undefined);
}

/** qemu-img create's error line: the file name, the message, and qemu's hint lines after it. */
function createFailure(filename: string, e: unknown): number {
  const hint = isImageError(e) && e.hint !== undefined ? e.hint : '';
  err(`${PROG}: ${filename}: ${messageOf(e)}\n${hint}`);
  return 1;
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
  const objects = new ObjectStore();
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
        if (objects.add(o.value!)) return 0;
        break;
    }
  }
  const filename = operands[0];
  if (optText !== undefined && hasHelpOption(optText)) {
    if (!findFormat(fmt)) throw new CliError(`Unknown file format '${fmt}'`);
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

  if (!findFormat(fmt)) return createFailure(filename, new Error(`Unknown file format '${fmt}'`));
  let bag: OptionBag;
  try {
    bag = parseCreateOptions(fmt, optText);
    if (baseFilename !== undefined) bag.set('backing_file', baseFilename);
    if (baseFmt !== undefined) bag.set('backing_fmt', baseFmt);
    await createImageOn(nodeHost, filename, {
      format: fmt,
      options: bag,
      size,
      backingUnsafe: unsafe,
      secrets: objects.secrets,
      onFormatting: quiet ? undefined : (line) => out(line + '\n'),
    });
  } catch (e) {
    if (shouldRerun(e)) throw e; // main runs the command again with the cipher available
    return createFailure(filename, e);
  }
  return 0;
}

