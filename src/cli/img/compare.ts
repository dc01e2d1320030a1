/** qemu-img compare: messages on stdout, exit 0 identical, 1 different, 2 open error, 3/4 I/O. */
import type { Image } from '../../node.js';
import { compareImages, CompareFailure } from '../../node.js';
import { CliError, openCli, out, Progress, validCache } from '../common.js';
import { ObjectStore } from '../objects.js';
import { getopt, UsageError } from '../options.js';

export const compareHelp = `usage: qimg compare [--object objectdef] [--image-opts] [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] filename1 filename2

Compare the guest-visible contents of two images.
  -f, --a-format=FMT   format of the first image
  -F, --b-format=FMT   format of the second image
  -s, --strict         sizes and allocation must match too
  -p, --progress       show progress
  -q, --quiet          print nothing, report through the exit code
  -U, --force-share    open even while another process writes the images
  -T, --cache=MODE     source cache mode (checked; both images are only read, so no
                       mode changes what is compared)
Exit code: 0 identical, 1 different, 2 open error, 3 allocation query error, 4 read error.  --object OBJDEF       secret,id=ID,data=STRING|file=PATH[,format=raw|base64]: a secret
                         that key-secret options name (the only object type)
  --image-opts          the file name is an option string: driver=FMT,file.filename=PATH,...
`;

export async function cmdCompare(args: string[]): Promise<number> {
  const { options, operands } = getopt(args, ':hf:F:T:pqsU', [
    { name: 'help', arg: 'none', key: 'h' },
    { name: 'object', arg: 'required', key: 'object' },
    { name: 'image-opts', arg: 'none', key: 'image-opts' },
    { name: 'force-share', arg: 'none', key: 'U' },
    { name: 'a-format', arg: 'required', key: 'f' },
    { name: 'b-format', arg: 'required', key: 'F' },
    { name: 'cache', arg: 'required', key: 'T' },
    { name: 'progress', arg: 'none', key: 'p' },
    { name: 'quiet', arg: 'none', key: 'q' },
    { name: 'strict', arg: 'none', key: 's' },
  ]);
  let fmt1: string | undefined;
  let fmt2: string | undefined;
  let progress = false;
  let quiet = false;
  let strict = false;
  let cache: string | undefined;
  let imageOpts = false;
  const objects = new ObjectStore(2);
  for (const o of options) {
    switch (o.key) {
      case 'h':
        out(compareHelp);
        return 0;
      case 'f':
        fmt1 = o.value;
        break;
      case 'F':
        fmt2 = o.value;
        break;
      case 'T':
        cache = o.value;
        break;
      case 'p':
        progress = true;
        break;
      case 'q':
        quiet = true;
        break;
      case 's':
        strict = true;
        break;
      case 'image-opts':
        imageOpts = true;
        break;
      case 'object':
        if (objects.add(o.value!)) return 0;
        break;
    }
  }
  // qemu-img: progress wins over quiet.
  if (progress) quiet = false;
  if (operands.length !== 2) throw new UsageError('Expecting two image file names');
  // Both images are only read: a cache mode changes no byte read, so a valid one is honoured as is.
  if (cache !== undefined && !validCache(cache)) throw new CliError(`Invalid source cache option: ${cache}`, 2);
  const [file1, file2] = operands as [string, string];
  const say = (s: string): void => {
    if (!quiet) out(s);
  };

  let img1: Image | undefined;
  let img2: Image | undefined;
  const meter = new Progress(progress, 2.0);
  try {
    const forceShare = options.some((o) => o.key === 'U');
    const access = { imageOpts, secrets: objects.secrets };
    img1 = await openCli(file1, { format: fmt1, exitCode: 2, forceShare, ...access });
    img2 = await openCli(file2, { format: fmt2, exitCode: 2, forceShare, ...access });
    meter.print(0, 100);
    let code: number;
    try {
      const r = await compareImages(img1, img2, {
        strict,
        names: [file1, file2],
        onSizeMismatch: () => say('Warning: Image size mismatch!\n'),
        progress: (d) => meter.print(d, 100),
      });
      switch (r.kind) {
        case 'identical':
          say('Images are identical.\n');
          code = 0;
          break;
        case 'content':
          say(`Content mismatch at offset ${r.offset}!\n`);
          code = 1;
          break;
        case 'strict-size':
          say('Strict mode: Image size mismatch!\n');
          code = 1;
          break;
        case 'strict-status':
          say(`Strict mode: Offset ${r.offset} block status mismatch!\n`);
          code = 1;
          break;
      }
    } catch (e) {
      if (e instanceof CompareFailure) throw new CliError(e.message, e.stage === 'status' ? 3 : 4, { cause: e });
      throw e;
    }
    return code;
  } finally {
    meter.end();
    await img2?.close();
    await img1?.close();
  }
}
