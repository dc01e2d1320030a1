/** qemu-img resize: grow or (with --shrink) shrink an image, with qemu-img 7.2's checks and words. */
import { parsePreallocation, resizeImage, type Image, type Preallocation } from '../../node.js';
import { checkImageOptsFormat, CliError, err, messageOf, openCli, out, PROG, probedRawWarning } from '../common.js';
import { ObjectStore } from '../objects.js';
import { getopt, UsageError } from '../options.js';

export const resizeHelp = `usage: qimg resize [--object objectdef] [--image-opts] [-f fmt] [--preallocation=prealloc] [-q] [--shrink] filename [+ | -]size

Change the virtual size of an image: SIZE sets it, +SIZE and -SIZE change it
(suffixes k, M, G, T, P, E).
  -f, --format=FMT          image format (qcow2, qed, raw); probed when absent
  --preallocation=MODE      allocate the grown area: off, metadata, falloc, full
                            (formats support a subset; growing only)
  --shrink                  allow a smaller size: everything past the new end is lost
  -q, --quiet               print nothing on success  --object OBJDEF       secret,id=ID,data=STRING|file=PATH[,format=raw|base64]: a secret
                         that key-secret options name (the only object type)
  --image-opts          the file name is an option string: driver=FMT,file.filename=PATH,...
`;

const SIZE_HELP =
  "Parameter 'size' expects a non-negative number below 2^64\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.";

const SUFFIX: Record<string, bigint> = { '': 1n, B: 1n, K: 1n << 10n, M: 1n << 20n, G: 1n << 30n, T: 1n << 40n, P: 1n << 50n, E: 1n << 60n };

/** qemu's size option: bytes as a bigint, its complaint for text, or its range error at 2^64. */
function parseSizeOption(text: string): bigint {
  const m = /^\s*(0[xX][0-9a-fA-F]+|\d+(?:\.\d*)?|\.\d+)([bBkKmMgGtTpPeE]?)$/.exec(text);
  if (!m) throw new CliError(SIZE_HELP);
  const [, num = '', suffix = ''] = m;
  const mul = SUFFIX[suffix.toUpperCase()]!;
  if (/^0[xX]/.test(num) && suffix !== '') throw new CliError(SIZE_HELP);
  if (num.includes('.') && mul === 1n) throw new CliError(SIZE_HELP);
  let bytes: bigint;
  if (num.includes('.')) bytes = BigInt(Math.floor(Number(num) * Number(mul)));
  else bytes = BigInt(num) * mul;
  if (bytes >= 1n << 64n) throw new CliError(`Value '${text}' is out of range for parameter 'size'`);
  return bytes;
}

export async function cmdResize(argv: string[]): Promise<number> {
  if (argv.includes('--help') || (argv.length === 1 && argv[0] === '-h')) {
    out(resizeHelp);
    return 0;
  }
  // As qemu-img: the size is taken off first, so "-1G" is never read as options.
  if (argv.length < 2) throw new UsageError('Not enough arguments');
  const args = argv.slice(0, -1);
  let sizeText = argv[argv.length - 1]!;
  const { options, operands } = getopt(args, ':f:hq', [
    { name: 'help', arg: 'none', key: 'h' },
    { name: 'format', arg: 'required', key: 'f' },
    { name: 'object', arg: 'required', key: 'object' },
    { name: 'image-opts', arg: 'none', key: 'image-opts' },
    { name: 'preallocation', arg: 'required', key: 'preallocation' },
    { name: 'shrink', arg: 'none', key: 'shrink' },
  ]);
  let format: string | undefined;
  let imageOpts = false;
  const objects = new ObjectStore();
  let quiet = false;
  let shrink = false;
  let preallocation: Preallocation = 'off';
  for (const o of options) {
    switch (o.key) {
      case 'h':
        out(resizeHelp);
        return 0;
      case 'f':
        format = o.value;
        break;
      case 'q':
        quiet = true;
        break;
      case 'shrink':
        shrink = true;
        break;
      case 'preallocation':
        try {
          preallocation = parsePreallocation(o.value!);
        } catch (e) {
          throw new CliError(messageOf(e));
        }
        break;
      case 'image-opts':
        imageOpts = true;
        break;
      case 'object':
        if (objects.add(o.value!)) return 0;
        break;
    }
  }
  if (operands.length !== 1) throw new UsageError('Expecting image file name and size');
  const path = operands[0]!;
  let sign = 0n;
  if (sizeText.startsWith('+') || sizeText.startsWith('-')) {
    sign = sizeText[0] === '+' ? 1n : -1n;
    sizeText = sizeText.slice(1);
  }
  const amount = parseSizeOption(sizeText);

  checkImageOptsFormat(imageOpts, format);
  const img: Image = await openCli(path, { format, writable: true, imageOpts, secrets: objects.secrets });
  if (format === undefined && !imageOpts && img.format === 'raw') err(probedRawWarning(path));
  try {
    const current = BigInt(img.size);
    // qemu computes in int64: sizes of 2^63 and more wrap to negative.
    const total = BigInt.asIntN(64, sign === 0n ? amount : current + sign * amount);
    if (total <= 0n) throw new CliError('New image size must be positive');
    if (total <= current && preallocation !== 'off') throw new CliError('Preallocation can only be used for growing images');
    if (total < current && !shrink) {
      err(`${PROG}: Use the --shrink option to perform a shrink operation.\n`);
      err(
        `${PROG}: warning: Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there.\n`,
      );
      return 1;
    }
    try {
      await resizeImage(img, Number(total), { shrink, preallocation });
    } catch (e) {
      throw new CliError(messageOf(e), 1, { cause: e });
    }
    if (!quiet) out('Image resized.\n');
  } finally {
    await img.close();
  }
  return 0;
}
