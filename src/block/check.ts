/**
 * Checking an image file for consistency (qemu-img check), for any format
 * that registers a check: the counts qemu reports, what was repaired, the
 * per-problem messages, and qemu-img check's exit code.
 */
import { ImageError } from '../errors.js';
import type { Storage } from '../io/storage.js';
import { formatDescriptor } from './format.js';

/** qemu-img check -r: nothing, leaked clusters only, or every error it can fix. */
export type RepairMode = 'none' | 'leaks' | 'all';

/** The numbers of qemu's BdrvCheckResult. */
export interface CheckCounts {
  corruptions: number;
  leaks: number;
  checkErrors: number;
  corruptionsFixed: number;
  leaksFixed: number;
  imageEndOffset: number;
  totalClusters: number;
  allocatedClusters: number;
  fragmentedClusters: number;
  compressedClusters: number;
}

export const emptyCounts = (): CheckCounts => ({
  corruptions: 0,
  leaks: 0,
  checkErrors: 0,
  corruptionsFixed: 0,
  leaksFixed: 0,
  imageEndOffset: 0,
  totalClusters: 0,
  allocatedClusters: 0,
  fragmentedClusters: 0,
  compressedClusters: 0,
});

export interface CheckResult {
  /** What qemu-img prints: the last pass, with the repairing pass's *Fixed counts. */
  counts: CheckCounts;
  /** Set when a first pass repaired something (qemu-img then prints the repair summary and checks again). */
  repaired?: { leaksFixed: number; corruptionsFixed: number };
  /** One line per problem found, in order (qemu prints them on stderr). */
  messages: string[];
  /** Error lines of the last pass (qemu's error_report). */
  errors: string[];
  /** Set when the check could not complete: the reason (strerror text of the failing I/O). */
  failed?: string;
  /** qemu-img check's exit code: 0 clean, 1 check failed, 2 corruptions, 3 leaks only. */
  exitCode: 0 | 1 | 2 | 3;
}

/** qemu-img check's exit code for a result's counts. */
export function checkExitCode(counts: CheckCounts, failed?: string): 0 | 1 | 2 | 3 {
  return failed !== undefined || counts.checkErrors ? 1 : counts.corruptions ? 2 : counts.leaks ? 3 : 0;
}

/**
 * Check (and with `repair`, repair) the image of `format` in `storage`,
 * which must be open writable for a repair. A storage failure during the
 * check ends in a result with `failed` set, as qemu-img reports it; a format
 * without a check is refused with code 'unsupported'.
 */
export async function checkImageStorage(storage: Storage, format: string, repair: RepairMode = 'none'): Promise<CheckResult> {
  const d = formatDescriptor(format);
  if (!d.check) throw new CheckNotSupportedError();
  return d.check(storage, repair);
}

/**
 * qemu-img check --output=json's object (QAPI ImageCheck), members in the
 * order QEMU prints them, zero-valued optional members left out.
 */
export function checkJson(r: CheckCounts, filename: string, format: string): Record<string, string | number> {
  const o: Record<string, string | number> = {};
  const opt = (k: string, v: number): void => {
    if (v !== 0) o[k] = v;
  };
  opt('image-end-offset', r.imageEndOffset);
  opt('compressed-clusters', r.compressedClusters);
  opt('total-clusters', r.totalClusters);
  opt('corruptions', r.corruptions);
  opt('corruptions-fixed', r.corruptionsFixed);
  o['check-errors'] = r.checkErrors;
  opt('leaks', r.leaks);
  opt('leaks-fixed', r.leaksFixed);
  opt('allocated-clusters', r.allocatedClusters);
  o.filename = filename;
  o.format = format;
  opt('fragmented-clusters', r.fragmentedClusters);
  return o;
}

/** A format without a check (raw): qemu-img check exits 63 for it. */
export class CheckNotSupportedError extends ImageError {
  constructor() {
    super('unsupported', 'This image format does not support checks');
  }
}
