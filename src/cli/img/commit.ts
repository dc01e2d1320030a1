/** qemu-img commit: write an overlay's changes into its backing file. */
import { commitImageFile, isImageError, parseSize } from '../../node.js';
import { CliError, imageOperand, namedAsGiven, cvtnum, err, out, Progress } from '../common.js';
import { ObjectStore } from '../objects.js';
import { getopt, UsageError } from '../options.js';

export const commitHelp = `usage: qimg commit [--object objectdef] [--image-opts] [-q] [-f fmt] [-t cache] [-b base] [-r rate_limit] [-d] [-p] filename

Write everything the image (and the layers between it and the base) allocates into
the base, so that the base reads as the image did; then empty the image, so that it
reads through to the base.
  -b BASE        commit into this image of the backing chain (default: the backing
                 file); implies -d
  -d             leave the image as it is (do not empty it)
  -f FMT         the image's format; probed when absent
  -t CACHE       cache mode (default writeback)
  -r RATE        write at most RATE bytes per second into the base (k, M, G suffixes)
  -p, --progress show progress
  -q, --quiet    print nothing  --object OBJDEF       secret,id=ID,data=STRING|file=PATH[,format=raw|base64]: a secret
                         that key-secret options name (the only object type)
  --image-opts          the file name is an option string: driver=FMT,file.filename=PATH,...
`;

export async function cmdCommit(args: string[]): Promise<number> {
  const { options, operands } = getopt(args, ':f:ht:b:dpqr:', [
    { name: 'help', arg: 'none', key: 'h' },
    { name: 'object', arg: 'required', key: 'object' },
    { name: 'image-opts', arg: 'none', key: 'image-opts' },
  ]);
  let format: string | undefined;
  let imageOpts = false;
  const objects = new ObjectStore();
  let cache = 'writeback';
  let base: string | undefined;
  let drop = false;
  let progress = false;
  let quiet = false;
  let rateLimit: number | undefined;
  for (const o of options) {
    const v = o.value ?? '';
    switch (o.key) {
      case 'h':
        out(commitHelp);
        return 0;
      case 'f':
        format = v;
        break;
      case 't':
        cache = v;
        break;
      case 'b':
        base = v;
        // As qemu-img: naming a base implies -d.
        drop = true;
        break;
      case 'd':
        drop = true;
        break;
      case 'p':
        progress = true;
        break;
      case 'q':
        quiet = true;
        break;
      case 'r':
        rateLimit = cvtnum('rate limit', v, (t) => parseSize(t));
        break;
      case 'object':
        if (objects.add(o.value!)) return 0;
        break;
      case 'image-opts':
        imageOpts = true;
        break;
    }
  }
  if (quiet) progress = false;
  if (operands.length !== 1) throw new UsageError('Expecting one image file name');
  const meter = new Progress(progress, 1);
  meter.print(0, 100);
  try {
    const target = imageOperand(operands[0]!, format, { imageOpts, secrets: objects.secrets }, true);
    await namedAsGiven(operands[0]!, target.path, () => commitImageFile(target.path, {
      ...target,
      cache,
      base,
      drop,
      rateLimit,
      onWarning: (m) => err(m),
      onProgress: (done, total) => meter.print(total === 0 ? 100 : (done / total) * 100, 0),
    }));
  } catch (e) {
    meter.end();
    if (isImageError(e)) throw new CliError(e.message, 1, { cause: e });
    throw e;
  }
  meter.print(100, 0);
  meter.end();
  if (!quiet) out('Image committed.\n');
  return 0;
}
