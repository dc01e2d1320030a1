/**
 * qemu-img check: report (and with -r, repair) an image's consistency, with
 * qemu-img 7.2's human and JSON output, stderr lines and exit codes
 * (0 clean, 1 check failed, 2 corruptions, 3 leaks only, 63 unsupported).
 */
import { probeFormat, parseFormatName, PROBE_BYTES } from '../../block/probe.js';
import type { ImageFormat } from '../../block/driver.js';
import { imagePermissions } from '../../block/perms.js';
import { checkImage, imageCheckJson, type CheckReport } from '../../formats/qcow2/check.js';
import { emptyCounts, type CheckCounts } from '../../formats/qcow2/check-refs.js';
import { isImageError } from '../../errors.js';
import { checkQedImage } from '../../formats/qed/check.js';
import { ImageError } from '../../errors.js';
import { openImageFile } from '../../node.js';
import { parseHeader as parseQedHeader } from '../../formats/qed/header.js';
import { FileStorage } from '../../io/file.js';
import type { Storage } from '../../io/storage.js';
import { dropsFlushes, parseCacheMode } from '../../io/cache.js';
import { CliError, err, messageOf, out, outputFormat, probedRawWarning, PROG, strerror } from '../common.js';
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
                         flushes of the repairs
`;

interface Outcome {
  counts: CheckCounts;
  repaired?: { leaksFixed: number; corruptionsFixed: number };
  messages: string[];
  errors: string[];
  failed?: string;
  exitCode: number;
}

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
      case 'image-opts':
        throw new CliError(`--${o.key} is not supported`);
      default:
        break;
    }
  }
  if (operands.length !== 1) throw new UsageError('Expecting one image file name');
  const path = operands[0]!;
  // Checked after the file name, as qemu-img does.
  const cache = parseCacheMode(cacheText);
  if (cache === undefined) throw new CliError(`Invalid source cache option: ${cacheText}`);

  const forceShare = options.some((o) => o.key === 'U');
  if (forceShare && fix !== 'none') throw new CliError(`Could not open '${path}': force-share=on can only be used with read-only images`);
  let storage: Storage;
  try {
    // Repairs flush as they go (and as qemu's driver does); cache=unsafe drops those flushes as qemu does.
    storage = await FileStorage.open(path, { writable: fix !== 'none', unsafe: dropsFlushes(cache) });
  } catch (e) {
    throw new CliError(`Could not open '${path}': ${messageOf(e)}`);
  }
  try {
    const fmt = await formatOf(storage, path, format);
    try {
      await storage.setPermissions?.(imagePermissions(fmt, { writable: fix !== 'none', forceShare }));
    } catch (e) {
      throw new CliError(`Could not open '${path}': ${messageOf(e)}`);
    }
    if (fmt === 'raw') {
      // -r opens the image for writing, which is when qemu warns about a probed raw image.
      if (fix !== 'none' && format === undefined) err(probedRawWarning(path));
      err(`${PROG}: This image format does not support checks\n`);
      return 63;
    }
    let r: Outcome;
    try {
      await filesItNamesOpen(path, fmt);
      r = fmt === 'qcow2' ? await qcow2Outcome(storage, fix) : await qedOutcome(storage, fix);
    } catch (e) {
      // The storage failed (or memory ran out) during the scan or a repair:
      // QEMU's bdrv_check returns -errno and qemu-img says "Check failed: <strerror>".
      if (!isImageError(e, 'io')) throw new CliError(`Could not open '${path}': ${messageOf(e)}`);
      r = { counts: emptyCounts(), messages: [], errors: [], failed: strerror(e), exitCode: 1 };
    }
    for (const m of r.messages) err(`${m}\n`);
    for (const e of r.errors) err(`${PROG}: ${e}\n`);
    if (r.repaired && output === 'human' && !quiet) {
      out(
        `The following inconsistencies were found and repaired:\n\n    ${r.repaired.leaksFixed} leaked clusters\n    ${r.repaired.corruptionsFixed} corruptions\n\nDouble checking the fixed image now...\n`,
      );
    }
    if (r.failed === undefined && !quiet) {
      if (output === 'json') out(`${toQemuJson(imageCheckJson(r.counts, path, fmt))}\n`);
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
  } finally {
    await storage.close();
  }
}

async function formatOf(storage: Storage, path: string, named: string | undefined): Promise<ImageFormat> {
  if (named !== undefined) {
    const f = parseFormatName(named);
    if (f === undefined) throw new CliError(`Could not open '${path}': Unknown driver '${named}'`);
    return f;
  }
  const head = new Uint8Array(Math.min(PROBE_BYTES, await storage.size()));
  await storage.read(head, 0);
  return probeFormat(head);
}

/**
 * qemu-img check opens the image with its backing chain and external data
 * file before checking, so one of those that cannot be opened fails the
 * check ("Could not open backing file: ...", "Could not open 'x.data': ...").
 * Other open failures are left to the check itself, which reports damage
 * qimg's regular open would refuse.
 */
async function filesItNamesOpen(path: string, fmt: ImageFormat): Promise<void> {
  let img;
  try {
    img = await openImageFile(path, { format: fmt });
  } catch (e) {
    // The image itself is open already (cmdCheck), so a file that cannot be opened is one it names.
    if (e instanceof ImageError && /^Could not open (backing file|')/.test(e.message)) throw e;
    return;
  }
  await img.close();
}

async function qcow2Outcome(storage: Storage, fix: 'none' | 'leaks' | 'all'): Promise<Outcome> {
  const o = await checkImage(storage, fix);
  const rep: CheckReport = o.report;
  const res: Outcome = { counts: rep, messages: o.messages, errors: o.errors, failed: rep.failed, exitCode: o.exitCode };
  if (o.repaired) res.repaired = o.repaired;
  return res;
}

/** QED: any -r mode fixes (qemu's bdrv_qed_co_check); a repair is followed by a plain second pass. */
async function qedOutcome(storage: Storage, fix: 'none' | 'leaks' | 'all'): Promise<Outcome> {
  const scan = async (doFix: boolean): Promise<CheckCounts> => {
    const bytes = new Uint8Array(4096);
    await storage.read(bytes, 0);
    const { header, geometry } = parseQedHeader(bytes, await storage.size());
    const q = await checkQedImage(storage, header, geometry, { fix: doFix });
    return {
      corruptions: q.corruptions,
      leaks: q.leaks,
      checkErrors: q.checkErrors,
      corruptionsFixed: q.corruptionsFixed,
      leaksFixed: 0,
      imageEndOffset: 0,
      totalClusters: q.totalClusters,
      allocatedClusters: q.allocatedClusters,
      fragmentedClusters: q.fragmentedClusters,
      compressedClusters: 0,
    };
  };
  const first = await scan(fix !== 'none');
  if (first.corruptionsFixed === 0) return { counts: first, messages: [], errors: [], exitCode: 0 };
  const second = await scan(false);
  second.corruptionsFixed = first.corruptionsFixed;
  return { counts: second, repaired: { leaksFixed: 0, corruptionsFixed: first.corruptionsFixed }, messages: [], errors: [], exitCode: 0 };
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
