/** qemu-img dd: copy an image, or part of it, block by block into a new image. */
import { ddImageFile, isImageError, parseSize } from '../../node.js';
import { CliError, cvtnum, err, out, PROG } from '../common.js';
import { ObjectStore } from '../objects.js';
import { getopt } from '../options.js';

export const ddHelp = `usage: qimg dd [--image-opts] [-U] [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks] [skip=blocks] if=input of=output

Copy an image into a new image of the output format, block by block.
  if=FILE        the input image
  of=FILE        the output image (created; an existing file is replaced)
  bs=SIZE        block size (default 512; k, M, G suffixes)
  count=N        copy up to N blocks, counted from the start of the input
  skip=N         start N blocks into the input
  -f FMT         the input's format; probed when absent
  -O FMT         the output's format (default raw)
  -U, --force-share  read the input even while another process writes it
`;

const INT_MAX = 2 ** 31 - 1;

export async function cmdDd(args: string[]): Promise<number> {
  const { options, operands } = getopt(args, ':hf:O:U', [
    { name: 'help', arg: 'none', key: 'h' },
    { name: 'image-opts', arg: 'none', key: 'image-opts' },
    { name: 'object', arg: 'required', key: 'object' },
    { name: 'force-share', arg: 'none', key: 'U' },
  ]);
  let format: string | undefined;
  let outputFormat = 'raw';
  let forceShare = false;
  const objects = new ObjectStore();
  for (const o of options) {
    switch (o.key) {
      case 'h':
        out(ddHelp);
        return 0;
      case 'f':
        format = o.value;
        break;
      case 'O':
        outputFormat = o.value ?? 'raw';
        break;
      case 'U':
        forceShare = true;
        break;
      case 'image-opts':
        throw new CliError('--image-opts is not supported by qimg dd');
      case 'object':
        if (objects.add(o.value!)) return 0;
        break;
    }
  }
  let input: string | undefined;
  let output: string | undefined;
  let blockSize = 512;
  let count: number | undefined;
  let skip: number | undefined;
  for (const operand of operands) {
    const eq = operand.indexOf('=');
    if (eq < 0) throw new CliError(`unrecognized operand ${operand}`);
    const key = operand.slice(0, eq);
    const value = operand.slice(eq + 1);
    switch (key) {
      case 'bs':
        blockSize = cvtnum('bs', value, (t) => parseSize(t), 1, INT_MAX);
        break;
      case 'count':
        count = cvtnum('count', value, (t) => parseSize(t));
        break;
      case 'skip':
        skip = cvtnum('skip', value, (t) => parseSize(t));
        break;
      case 'if':
        input = value;
        break;
      case 'of':
        output = value;
        break;
      default:
        throw new CliError(`unrecognized operand ${key}`);
    }
  }
  if (input === undefined || output === undefined) throw new CliError('Must specify both input and output files');
  try {
    await ddImageFile(input, output, { format, outputFormat, blockSize, count, skip, forceShare, secrets: objects.secrets, onWarning: (m) => err(`${PROG}: ${m}\n`) });
  } catch (e) {
    if (isImageError(e)) throw new CliError(e.message, 1, { cause: e });
    throw e;
  }
  return 0;
}
