/** qemu-img snapshot on Node: an image file's internal snapshots listed, created, deleted, applied. */
import type { ImageFormat } from '../block/driver.js';
import type { SnapshotInfo } from '../block/info.js';
import { imagePermissions } from '../block/perms.js';
import { probeStorage } from '../block/probe.js';
import { applySnapshotOn, createSnapshotOn, deleteSnapshotOn, listSnapshotsOn } from '../block/snapshot.js';
import { ImageError } from '../errors.js';
import { FileStorage } from '../io/file.js';
import { probedRawWarning } from './check.js';
import { imageAccess, openImageFile, type ImageAccessOptions } from './open.js';
import { couldNotOpen } from './errors.js';

export interface SnapshotFileOptions extends ImageAccessOptions {
  /** Read even while another process writes the image (-U; listing only). */
  forceShare?: boolean;
  /** Receives qemu's warnings (a probed raw image opened for writing). */
  onWarning?: (message: string) => void;
}

export interface ListSnapshotsFileOptions extends SnapshotFileOptions {
  /** Open the image for writing while listing (qemu-img snapshot without an action). */
  writable?: boolean;
}

/**
 * The internal snapshots of an image file (qemu-img snapshot -l); empty for
 * formats without them.
 *
 * @example
 * for (const sn of await listSnapshotsFile('disk.qcow2')) console.log(sn.id, sn.name);
 */
export function listSnapshotsFile(path: string, opts: ListSnapshotsFileOptions = {}): Promise<SnapshotInfo[]> {
  return withImageFile(path, opts.writable ?? false, opts, (storage, format) => listSnapshotsOn(storage, format));
}

/**
 * Create an internal snapshot of an image file's current contents
 * (qemu-img snapshot -c). Names need not be unique; the id is the next
 * free number. Returns the new table entry.
 *
 * @example
 * const sn = await createSnapshotFile('disk.qcow2', 'before-upgrade');
 */
export function createSnapshotFile(path: string, name: string, opts: SnapshotFileOptions = {}): Promise<SnapshotInfo> {
  return withImageFile(path, true, opts, (storage, format) => createSnapshotOn(storage, format, name));
}

/**
 * Delete the first internal snapshot named `name` (qemu-img snapshot -d),
 * releasing the clusters only it used.
 *
 * @example
 * await deleteSnapshotFile('disk.qcow2', 'before-upgrade');
 */
export function deleteSnapshotFile(path: string, name: string, opts: SnapshotFileOptions = {}): Promise<void> {
  return withImageFile(path, true, opts, (storage, format) => deleteSnapshotOn(storage, format, name));
}

/**
 * Revert an image file to an internal snapshot, found by id and then by
 * name (qemu-img snapshot -a). The snapshot stays; the current contents
 * are gone.
 *
 * @example
 * await applySnapshotFile('disk.qcow2', 'before-upgrade');
 */
export function applySnapshotFile(path: string, idOrName: string, opts: SnapshotFileOptions = {}): Promise<void> {
  return withImageFile(path, true, opts, async (storage, format, probedRaw) => {
    // qemu reopens the image around its attempt, warning again.
    if (probedRaw && format === 'raw') opts.onWarning?.(probedRawWarning(path));
    return applySnapshotOn(storage, format, idOrName);
  });
}

/**
 * Open as qemu-img snapshot does: the whole image first (qemu's open errors,
 * a dirty image repaired), then the file itself, locked, for the operation.
 */
async function withImageFile<T>(
  path: string,
  writable: boolean,
  opts: SnapshotFileOptions,
  run: (storage: FileStorage, format: ImageFormat, probedRaw: boolean) => Promise<T>,
): Promise<T> {
  if (opts.forceShare && writable) throw couldNotOpen(path, new ImageError('bad-argument', 'force-share=on can only be used with read-only images'));
  let format: ImageFormat;
  try {
    const img = await openImageFile(path, { writable, forceShare: opts.forceShare, backing: false, ...imageAccess(opts), onWarning: opts.onWarning });
    format = img.format;
    await img.close();
  } catch (e) {
    throw couldNotOpen(path, e);
  }
  if (writable && format === 'raw') opts.onWarning?.(probedRawWarning(path));
  let storage: FileStorage;
  try {
    storage = await FileStorage.open(path, { writable });
  } catch (e) {
    throw couldNotOpen(path, e);
  }
  try {
    await storage.setPermissions?.(imagePermissions(format, { writable, forceShare: opts.forceShare }));
    // The format the contents say now (another process could have rewritten them).
    format = await probeStorage(storage);
  } catch (e) {
    await storage.close().catch(() => {});
    throw couldNotOpen(path, e);
  }
  try {
    return await run(storage, format, format === 'raw');
  } finally {
    await storage.close();
  }
}
