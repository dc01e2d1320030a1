/**
 * Typed errors with a stable code. The CLI prints `qimg: <message>` and maps
 * codes to qemu-img's exit codes; library users narrow with isImageError().
 */
import { errnoOf, strerror } from './errno.js';

export type ImageErrorCode =
  | 'invalid' // the bytes do not form a valid image (bad header, bad table)
  | 'unsupported' // valid, but uses something qimg (or the spec) does not allow here
  | 'corrupt' // metadata contradicts itself; the corrupt bit may be set
  | 'io' // the storage failed
  | 'bad-argument' // the caller asked for something impossible
  | 'not-found' // a named file does not exist
  | 'read-only' // a write to an image opened read-only
  | 'not-permitted' // refused for safety (a write that would change a probed raw image's format)
  | 'needs-secret' // encrypted image, no key given
  | 'bad-secret' // encrypted image, the key given unlocks no key slot
  | 'cipher-unavailable' // the crypto provider has the image's cipher but not enabled here (Node: CAST5 needs --openssl-legacy-provider)
  | 'policy' // the open policy refused an implicit file (backing, data file)
  | 'locked' // another process holds the image with permissions that conflict (QEMU's image locks)
  | 'aborted'; // the caller cancelled the operation through its AbortSignal

export class ImageError extends Error {
  readonly code: ImageErrorCode;
  /**
   * For storage failures: the errno name the host reported (ENOSPC, EIO), so
   * callers can print qemu's strerror text or tell a full disk from a bad one.
   */
  readonly errno?: string;
  /** Lines qemu prints after the message to help (for example "Could not open backing image."). */
  readonly hint?: string;
  constructor(code: ImageErrorCode, message: string, options?: { cause?: unknown; errno?: string; hint?: string }) {
    super(message, options?.cause !== undefined ? { cause: options.cause } : undefined);
    this.name = 'ImageError';
    this.code = code;
    if (options?.errno !== undefined) this.errno = options.errno;
    if (options?.hint !== undefined) this.hint = options.hint;
  }
}

export function isImageError(e: unknown, ...codes: ImageErrorCode[]): e is ImageError {
  return e instanceof ImageError && (codes.length === 0 || codes.includes(e.code));
}

export const invalid = (msg: string): ImageError => new ImageError('invalid', msg);
export const unsupported = (msg: string): ImageError => new ImageError('unsupported', msg);
export const corrupt = (msg: string): ImageError => new ImageError('corrupt', msg);

/**
 * A storage failure as an ImageError: the message is the strerror text
 * ("No space left on device"), which callers put after their own context
 * ("error while writing at byte N: ..."), as qemu does. Already-wrapped
 * errors pass through unchanged.
 */
export function ioError(e: unknown): ImageError {
  if (e instanceof ImageError) return e;
  const errno = errnoOf(e);
  return new ImageError('io', strerror(e), { cause: e, errno });
}
