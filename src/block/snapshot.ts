/**
 * Internal snapshots (qemu-img snapshot): list, create, delete and apply,
 * for any format that registers snapshot operations on its descriptor
 * (qcow2). The errors carry qemu-img's whole message, so a caller prints
 * them as they are; other formats fail the way qemu's block layer does.
 */
import { ImageError } from '../errors.js';
import type { Storage } from '../io/storage.js';
import type { ImageFormat } from './driver.js';
import { formatDescriptor } from './format.js';
import type { SnapshotInfo } from './info.js';
import type { Image } from './image.js';

export type { SnapshotInfo } from './info.js';

/** A snapshot to read (qemu-img convert -l): an id or name (id first), or an id and/or a name that must both match. */
export type InternalSnapshotRef = string | { id?: string; name?: string };

/** What a format implements to hold internal snapshots; every method works on the closed image file. */
export interface SnapshotOps {
  list(storage: Storage): Promise<SnapshotInfo[]>;
  /** Throws SnapshotError with qemu's reason (without the "Could not create" prefix). */
  create(storage: Storage, name: string, now: { sec: number; nsec: number }): Promise<SnapshotInfo>;
  /** By name, as qemu-img snapshot -d resolves it. */
  delete(storage: Storage, name: string): Promise<void>;
  /** By id, then by name. */
  apply(storage: Storage, idOrName: string): Promise<void>;
}

/** A snapshot operation failed for a reason qemu states (the text after "Could not ... snapshot 'x': "). */
export class SnapshotError extends ImageError {}

/** Opening an image at an internal snapshot failed; the message is qemu-img convert's whole line. */
export class SnapshotLoadError extends ImageError {}

const OP_NOT_SUPPORTED = '-95 (Operation not supported)';

/** The internal snapshots of an open image (its top layer), as qemu-img info lists them. */
export async function listSnapshots(image: Image): Promise<SnapshotInfo[]> {
  return (await image.info()).snapshots ?? [];
}

/** The snapshot table of an image file's format (empty for formats without snapshots, as qemu lists them). */
export async function listSnapshotsOn(storage: Storage, format: ImageFormat): Promise<SnapshotInfo[]> {
  const ops = formatDescriptor(format).snapshots;
  return ops ? ops.list(storage) : [];
}

/** Create an internal snapshot named `name` of the image's current contents; returns its table entry. */
export async function createSnapshotOn(storage: Storage, format: ImageFormat, name: string, now = currentTime()): Promise<SnapshotInfo> {
  const ops = formatDescriptor(format).snapshots;
  return wrap('create', name, () => {
    if (!ops) throw new SnapshotError('unsupported', OP_NOT_SUPPORTED);
    return ops.create(storage, name, now);
  });
}

/** Delete the first snapshot named `name`. */
export async function deleteSnapshotOn(storage: Storage, format: ImageFormat, name: string): Promise<void> {
  const ops = formatDescriptor(format).snapshots;
  return wrap('delete', name, () => {
    if (!ops) throw new SnapshotError('not-found', 'snapshot not found');
    return ops.delete(storage, name);
  });
}

/** Revert the image to a snapshot (by id, then by name); the snapshot stays. */
export async function applySnapshotOn(storage: Storage, format: ImageFormat, idOrName: string): Promise<void> {
  const ops = formatDescriptor(format).snapshots;
  return wrap('apply', idOrName, () => {
    if (!ops) throw new SnapshotError('unsupported', 'Block driver does not support snapshots');
    return ops.apply(storage, idOrName);
  });
}

async function wrap<T>(verb: string, name: string, f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    if (!(e instanceof SnapshotError)) throw e;
    throw new ImageError(e.code, `Could not ${verb} snapshot '${name}': ${e.message}`, { cause: e });
  }
}

/** Now, as qemu stamps a snapshot: seconds and microseconds (as nanoseconds). */
export function currentTime(): { sec: number; nsec: number } {
  const us = Math.floor((performance.timeOrigin + performance.now()) * 1000);
  return { sec: Math.floor(us / 1e6), nsec: (us % 1e6) * 1000 };
}

/** The error opening an image at a snapshot gives when its format has no snapshots (qemu's words). */
export function noTemporarySnapshots(format: ImageFormat): SnapshotLoadError {
  return new SnapshotLoadError('unsupported', `Failed to load snapshot: Block format '${format}' used by device '' does not support temporarily loading internal snapshots`);
}
