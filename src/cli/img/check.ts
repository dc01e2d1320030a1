/**
 * qemu-img check: report (and with -r, repair) an image's consistency, with
 * qemu-img 7.2's human and JSON output, stderr lines and exit codes
 * (0 clean, 1 check failed, 2 corruptions, 3 leaks only, 63 unsupported).
 */
import { checkImageFile, checkJson, CheckNotSupportedError, isImageError, parseCacheMode, type CheckCounts } from '../../node.js';
import { CliError, imageOperand, namedAsGiven, err, out, outputFormat, PROG } from '../common.js';
import { ObjectStore } from '../objects.js';
import { toFixedC } from '../format.js';
import { toQemuJson } from '../json.js';
import { getopt, UsageError } from '../options.js';

export const checkHelp = `usage: qimg check [--object objectdef] [--image-opts] [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] [-T src_cache] [-U] filename

Check an image for consistency; with -r, repair it.
  -f, --format=FMT       image format (qcow2, qed, raw); probed when absent
  --output=human|json    output format (default human)
  -r, --repair=leaks|all repair leaked clusters only, or all errors
  -q, --quiet            print nothing on success
  -U, --force-share      check even while another process writes the image (not with -r)
  -T CACHE               cache mode (default writeback); with -r, unsafe skips the
                         flushes of the repairs  --object OBJDEF       secret,id=ID,data=STRING|file=PATH[,format=raw|base64]: a secret
                         that key-secret options name (the only object type)
  --image-opts          the file name is an option string: driver=FMT,file.filename=PATH,...
`;

export async function cmdCheck(args: string[]): Promise<number> {
  const { options, operands } = getopt(args, ':hf:r:T:qU', [
    { name: 'help', arg: 'none', key: 'h' },
    { name: 'format', arg: 'required', key: 'f' },
    { name: 'repair', arg: 'required', key: 'r' },
    { name: 'output', arg: 'required', key: 'output' },
    { name: 'cache', arg: 'required', key: 'T' },
    { name: 'force-share', arg: 'none', key: 'U' },
    { name: 'quiet', arg: 'none', key: 'q' },
    { name: 'object', arg: 'required', key: 'object' },
    { name: 'image-opts', arg: 'none', key: 'image-opts' },
  ]);
  let format: string | undefined;
  let imageOpts = false;
  const objects = new ObjectStore();
  let fix: 'none' | 'leaks' | 'all' = 'none';
  let output: 'human' | 'json' = 'human';
  let quiet = false;
  // qemu-img check's default cache mode; it only matters when -r writes.
  let cacheText = 'writeback';
  for (const o of options) {
    const v = o.value ?? '';
    switch (o.key) {
      case 'h':
        out(checkHelp);
        return 0;
      case 'f':
        format = v;
        break;
      case 'r':
        if (v !== 'leaks' && v !== 'all') throw new UsageError(`--repair (-r) expects 'leaks' or 'all', not '${v}'`);
        fix = v;
        break;
      case 'output':
        output = outputFormat(v);
        break;
      case 'T':
        cacheText = v;
        break;
      case 'q':
        quiet = true;
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
  if (operands.length !== 1) throw new UsageError('Expecting one image file name');
  const target = imageOperand(operands[0]!, format, { imageOpts, secrets: objects.secrets }, fix !== undefined && fix !== 'none');
  const path = target.path;
  // Checked after the file name, as qemu-img does.
  const cache = parseCacheMode(cacheText);
  if (cache === undefined) throw new CliError(`Invalid source cache option: ${cacheText}`);

  const forceShare = options.some((o) => o.key === 'U');
  let r;
  try {
    r = await namedAsGiven(operands[0]!, path, () => checkImageFile(path, { ...target, repair: fix, cache, forceShare, onWarning: (m) => err(m) }));
  } catch (e) {
    if (e instanceof CheckNotSupportedError) {
      err(`${PROG}: ${e.message}\n`);
      return 63;
    }
    if (isImageError(e)) throw new CliError(e.message, 1, { cause: e });
    throw e;
  }
  for (const m of r.messages) err(`${m}\n`);
  for (const e of r.errors) err(`${PROG}: ${e}\n`);
  if (r.repaired && output === 'human' && !quiet) {
    out(
      `The following inconsistencies were found and repaired:\n\n    ${r.repaired.leaksFixed} leaked clusters\n    ${r.repaired.corruptionsFixed} corruptions\n\nDouble checking the fixed image now...\n`,
    );
  }
  if (r.failed === undefined && !quiet) {
    // qemu names the image as given (the option string under --image-opts).
    if (output === 'json') out(`${toQemuJson(checkJson(r.counts, operands[0]!, r.format))}\n`);
    else out(human(r.counts));
  }
  if (r.failed !== undefined) {
    err(`${PROG}: Check failed: ${r.failed}\n`);
    return 1;
  }
  if (r.counts.checkErrors) {
    err(`${PROG}: Check failed\n`);
    return 1;
  }
  return r.counts.corruptions ? 2 : r.counts.leaks ? 3 : 0;
}

/** qemu-img's dump_human_image_check. */
function human(c: CheckCounts): string {
  let s = '';
  if (!(c.corruptions || c.leaks || c.checkErrors)) {
    s += 'No errors were found on the image.\n';
  } else {
    if (c.corruptions) s += `\n${c.corruptions} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n`;
    if (c.leaks) s += `\n${c.leaks} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n`;
    if (c.checkErrors) s += `\n${c.checkErrors} internal errors have occurred during the check.\n`;
  }
  if (c.totalClusters !== 0 && c.allocatedClusters !== 0) {
    const pct = (x: number) => toFixedC(x, 2);
    s += `${c.allocatedClusters}/${c.totalClusters} = ${pct((c.allocatedClusters * 100) / c.totalClusters)}% allocated, ${pct(
      (c.fragmentedClusters * 100) / c.allocatedClusters,
    )}% fragmented, ${pct((c.compressedClusters * 100) / c.allocatedClusters)}% compressed clusters\n`;
  }
  if (c.imageEndOffset) s += `Image end offset: ${c.imageEndOffset}\n`;
  return s;
}
