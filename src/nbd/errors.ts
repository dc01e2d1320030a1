/** How a failed image operation reaches the client: an NBD error value and a message. */
import { isImageError } from '../errors.js';
import { NBD_ERR } from './protocol.js';

/** A request the server refuses before touching the image (qemu's request checks). */
export class RequestError extends Error {
  constructor(
    readonly errno: number,
    message: string,
  ) {
    super(message);
  }
}

/** qemu's errno mapping: EPERM/EROFS, EIO, ENOMEM, ENOSPC (EFBIG, EDQUOT), EOVERFLOW, ENOTSUP, ESHUTDOWN; else EINVAL. */
export function nbdErrno(e: unknown): number {
  if (e instanceof RequestError) return e.errno;
  if (isImageError(e)) {
    switch (e.errno) {
      case 'EPERM':
      case 'EROFS':
        return NBD_ERR.EPERM;
      case 'EIO':
        return NBD_ERR.EIO;
      case 'ENOMEM':
        return NBD_ERR.ENOMEM;
      case 'ENOSPC':
      case 'EFBIG':
      case 'EDQUOT':
        return NBD_ERR.ENOSPC;
      case 'EOVERFLOW':
        return NBD_ERR.EOVERFLOW;
      case 'ENOTSUP':
      case 'EOPNOTSUPP':
        return NBD_ERR.ENOTSUP;
    }
    switch (e.code) {
      case 'read-only':
      case 'not-permitted':
        return NBD_ERR.EPERM;
      case 'unsupported':
        return NBD_ERR.ENOTSUP;
      case 'io':
      case 'corrupt':
        return NBD_ERR.EIO;
      default:
        return NBD_ERR.EINVAL;
    }
  }
  return NBD_ERR.EIO;
}

export const messageOf = (e: unknown): string => (e instanceof Error ? e.message : String(e));
