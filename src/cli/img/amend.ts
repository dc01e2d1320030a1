/**
 * qemu-img amend: argument parsing and messages around the library's
 * amendImageFile, in qemu-img 7.2's order (options, help, file name,
 * cache mode, open, then the format's amendment).
 */
import { amendImageFile, amendOptionHelp, hasHelpOption, isImageError, parseCacheMode } from '../../node.js';
import { CliError, imageOperand, namedAsGiven, err, messageOf, out, Progress, PROG } from '../common.js';
import { shouldRerun } from '../legacy-provider.js';
import { ObjectStore } from '../objects.js';
import { getopt, UsageError } from '../options.js';
import { accumulate } from './create.js';

export const amendHelp = `usage: qimg amend [--object objectdef] [--image-opts] [-p] [-q] [-f fmt] [-t cache] [--force] -o options filename

Change options of an existing image (qcow2: compat, refcount_bits, size, lazy_refcounts,
encryption key slots; luks: key slots).
  -o, --options=OPTIONS  the options to change (-o help lists them)
  -f, --format=FMT       image format; probed when absent
  -t CACHE               cache mode (default writeback); unsafe skips the flushes
  -p, --progress         show progress
  -q, --quiet            print nothing on success
  --force                allow erasing the last key slot (which loses the data)
  --object OBJDEF       secret,id=ID,data=STRING|file=PATH[,format=raw|base64]: a secret
                         that key-secret, new-secret and old-secret options name
  --image-opts          the file name is an option string: driver=FMT,file.filename=PATH,...
`;

export async function cmdAmend(args: string[]): Promise<number> {
  const { options, operands } = getopt(args, ':ho:f:t:pq', [
    { name: 'help', arg: 'none', key: 'h' },
    { name: 'options', arg: 'required', key: 'o' },
    { name: 'format', arg: 'required', key: 'f' },
    { name: 'cache', arg: 'required', key: 't' },
    { name: 'progress', arg: 'none', key: 'p' },
    { name: 'quiet', arg: 'none', key: 'q' },
    { name: 'force', arg: 'none', key: 'force' },
    { name: 'object', arg: 'required', key: 'object' },
    { name: 'image-opts', arg: 'none', key: 'image-opts' },
  ]);
  let format: string | undefined;
  let imageOpts = false;
  const objects = new ObjectStore();
  let optText: string | undefined;
  let cacheText = 'writeback';
  for (const o of options) {
    const v = o.value ?? '';
    switch (o.key) {
      case 'h':
        out(amendHelp);
        return 0;
      case 'o':
        optText = accumulate(optText, v);
        break;
      case 'f':
        format = v;
        break;
      case 't':
        cacheText = v;
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
  if (optText === undefined) throw new UsageError('Must specify options (-o)');
  const quiet = options.some((o) => o.key === 'q');
  const meter = new Progress(options.some((o) => o.key === 'p') && !quiet, 1.0);
  // qemu-img's meter is set up from here on: every way out ends its line.
  const force = options.some((o) => o.key === 'force');
  const status = await amendWithMeter(meter, format, optText, operands, cacheText, { imageOpts, secrets: objects.secrets }, force);
  meter.end();
  return status;
}

async function amendWithMeter(
  meter: Progress,
  format: string | undefined,
  optText: string,
  operands: string[],
  cacheText: string,
  access: { imageOpts: boolean; secrets: Record<string, Uint8Array> },
  force: boolean,
): Promise<number> {
  if (format !== undefined && hasHelpOption(optText)) return printHelp(format);
  let started = false;
  try {
    if (operands.length !== 1) throw new CliError('Expecting one image file name');
    const target = imageOperand(operands[0]!, format, access, true);
    const path = target.path;
    const cache = parseCacheMode(cacheText);
    if (cache === undefined) throw new CliError(`Invalid cache option: ${cacheText}`);
    const r = await namedAsGiven(operands[0]!, path, () =>
      amendImageFile(path, optText, {
        ...target,
        cache,
        force,
        onWarning: (m) => err(m),
        onStart: () => {
          started = true;
          meter.print(0, 0);
        },
        // qemu computes the percentage in single precision.
        onProgress: (done, total) => meter.print(total > 0 ? Math.fround(Math.fround(100 * Math.fround(done)) / Math.fround(total)) : 100, 0),
      }),
    );
    if (r.help !== undefined) out(r.help);
    else meter.print(100, 0);
  } catch (e) {
    if (shouldRerun(e)) throw e; // main runs the command again with the cipher available
    // qemu-img prints 100% once the amendment ran, whether it failed or not.
    if (started) meter.print(100, 0);
    const hint = isImageError(e) && e.hint !== undefined ? `${e.hint.replace(/\n?$/, '\n')}` : '';
    err(`${PROG}: ${messageOf(e)}\n${hint}`);
    return 1;
  }
  return 0;
}

function printHelp(format: string): number {
  try {
    out(amendOptionHelp(format));
    return 0;
  } catch (e) {
    err(`${PROG}: ${messageOf(e)}\n`);
    return 1;
  }
}
