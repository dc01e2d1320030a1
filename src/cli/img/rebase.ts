/** qemu-img rebase: change an image's backing file, keeping its contents unless -u. */
import { isImageError, rebaseImageFile } from '../../node.js';
import { CliError, imageOperand, namedAsGiven, err, out, Progress } from '../common.js';
import { ObjectStore } from '../objects.js';
import { getopt, UsageError } from '../options.js';

export const rebaseHelp = `usage: qimg rebase [--object objectdef] [--image-opts] [-U] [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] -b backing_file [-F backing_fmt] filename

Change the backing file of an image. Unless -u, every range the image does not
allocate itself and that the old and new backing files read differently is
copied into the image first, so the guest sees the same contents.
  -b FILE          the new backing file, relative to the image's directory;
                   '' removes the backing file (copying what it provided)
  -F FMT           the new backing file's format (required with a backing file)
  -f FMT           the image's format; probed when absent
  -u               unsafe: only rewrite the header; the backing files are not read
  -t CACHE         the image's cache mode (default writeback)
  -T CACHE         the backing files' cache mode (checked)
  -U, --force-share  open the new backing file even while another process writes it
  -p, --progress   show progress
  -q, --quiet      print nothing  --object OBJDEF       secret,id=ID,data=STRING|file=PATH[,format=raw|base64]: a secret
                         that key-secret options name (the only object type)
  --image-opts          the file name is an option string: driver=FMT,file.filename=PATH,...
`;

export async function cmdRebase(args: string[]): Promise<number> {
  const { options, operands } = getopt(args, ':hf:F:b:upt:T:qU', [
    { name: 'help', arg: 'none', key: 'h' },
    { name: 'object', arg: 'required', key: 'object' },
    { name: 'image-opts', arg: 'none', key: 'image-opts' },
    { name: 'force-share', arg: 'none', key: 'U' },
  ]);
  let format: string | undefined;
  let imageOpts = false;
  const objects = new ObjectStore();
  let backingFormat: string | undefined;
  let backingFile: string | undefined;
  let unsafe = false;
  let progress = false;
  let quiet = false;
  let cache = 'writeback';
  let sourceCache = 'writeback';
  let forceShare = false;
  for (const o of options) {
    const v = o.value ?? '';
    switch (o.key) {
      case 'h':
        out(rebaseHelp);
        return 0;
      case 'f':
        format = v;
        break;
      case 'F':
        backingFormat = v;
        break;
      case 'b':
        backingFile = v;
        break;
      case 'u':
        unsafe = true;
        break;
      case 'p':
        progress = true;
        break;
      case 't':
        cache = v;
        break;
      case 'T':
        sourceCache = v;
        break;
      case 'q':
        quiet = true;
        break;
      case 'U':
        forceShare = true;
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
  if (!unsafe && backingFile === undefined) throw new UsageError('Must specify backing file (-b) or use unsafe mode (-u)');
  const meter = new Progress(progress, 2);
  meter.print(0, 100);
  try {
    const target = imageOperand(operands[0]!, format, { imageOpts, secrets: objects.secrets }, true);
    await namedAsGiven(operands[0]!, target.path, () => rebaseImageFile(target.path, backingFile ?? '', {
      ...target,
      backingFormat,
      unsafe,
      cache,
      sourceCache,
      forceShare,
      progress: (delta) => meter.print(delta, 100),
      onWarning: (m) => err(m),
    }));
  } catch (e) {
    if (isImageError(e)) throw new CliError(e.message, 1, { cause: e });
    throw e;
  }
  meter.print(100, 0);
  meter.end();
  return 0;
}
