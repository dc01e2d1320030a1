/**
 * QEMU's block permissions for the files under an image: what an opener
 * holds (`perm`) and what it lets others do at the same time (`shared`).
 * The host turns them into QEMU's lock bytes (io/locks.ts), so qimg and
 * QEMU programs see each other. The rules below give the same bits that
 * qemu-img and qemu-io 7.2 take for the same open.
 */
import { findFormat } from './format.js';
import type { ImageFormat } from './driver.js';

export const PERM_CONSISTENT_READ = 1;
export const PERM_WRITE = 2;
export const PERM_WRITE_UNCHANGED = 4;
export const PERM_RESIZE = 8;
export const PERM_ALL = 15;

/** Bit order and names as QEMU prints them in lock errors. */
export const PERM_NAMES: readonly string[] = ['consistent read', 'write', 'write unchanged', 'resize'];

export interface Permissions {
  perm: number;
  shared: number;
}

export interface PermissionRequest {
  writable: boolean;
  /** Metadata only (qemu-img info): nothing is read, so no consistent read is needed. */
  metadataOnly?: boolean;
  /** -U: share everything with others (read-only opens only). */
  forceShare?: boolean;
}

/** The file under an image (top or backing) of the given format. */
export function imagePermissions(format: ImageFormat, req: PermissionRequest): Permissions {
  let perm = (req.metadataOnly ? 0 : PERM_CONSISTENT_READ) | (req.writable ? PERM_WRITE : 0);
  let shared = PERM_ALL;
  if (findFormat(format)?.hasMetadata ?? true) {
    // The file holds metadata: a writable image may rewrite and grow it
    // even without guest writes, and nobody else may change it underneath.
    if (req.writable) perm |= PERM_WRITE | PERM_RESIZE;
    shared &= ~(PERM_WRITE | PERM_RESIZE);
  }
  return { perm, shared: req.forceShare ? PERM_ALL : shared };
}

/** An external data file: others may write guest data there, but not resize it. */
export function dataFilePermissions(req: PermissionRequest): Permissions {
  const perm = (req.metadataOnly ? 0 : PERM_CONSISTENT_READ) | (req.writable ? PERM_WRITE | PERM_RESIZE : 0);
  return { perm, shared: req.forceShare ? PERM_ALL : PERM_ALL & ~PERM_RESIZE };
}

/** Creating (and truncating) a file: refused while anyone uses it, whatever -U says. */
export const CREATE_PERMISSIONS: Permissions = { perm: PERM_WRITE | PERM_RESIZE, shared: PERM_ALL & ~PERM_RESIZE };
