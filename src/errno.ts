/**
 * errno names (as Node reports them in `error.code`) and the strerror()
 * texts qemu prints for them. One table for the library and the CLI, and
 * free of Node imports so the block layer can use it too.
 */
const STRERROR: Readonly<Record<string, string>> = {
  EPERM: 'Operation not permitted',
  ENOENT: 'No such file or directory',
  EINTR: 'Interrupted system call',
  EIO: 'Input/output error',
  ENXIO: 'No such device or address',
  E2BIG: 'Argument list too long',
  EBADF: 'Bad file descriptor',
  EAGAIN: 'Resource temporarily unavailable',
  ENOMEM: 'Cannot allocate memory',
  EACCES: 'Permission denied',
  EBUSY: 'Device or resource busy',
  EEXIST: 'File exists',
  EXDEV: 'Invalid cross-device link',
  ENODEV: 'No such device',
  ENOTDIR: 'Not a directory',
  EISDIR: 'Is a directory',
  EINVAL: 'Invalid argument',
  ENFILE: 'Too many open files in system',
  EMFILE: 'Too many open files',
  ETXTBSY: 'Text file busy',
  EFBIG: 'File too large',
  ENOSPC: 'No space left on device',
  ESPIPE: 'Illegal seek',
  EROFS: 'Read-only file system',
  EPIPE: 'Broken pipe',
  ERANGE: 'Numerical result out of range',
  ENAMETOOLONG: 'File name too long',
  ENOSYS: 'Function not implemented',
  ELOOP: 'Too many levels of symbolic links',
  ENOTSUP: 'Operation not supported',
  EOPNOTSUPP: 'Operation not supported',
  EDQUOT: 'Disk quota exceeded',
  ESTALE: 'Stale file handle',
  ETIMEDOUT: 'Connection timed out',
  ECONNRESET: 'Connection reset by peer',
};

/** The errno name an error carries (`ENOSPC`), if it carries one. */
export function errnoOf(e: unknown): string | undefined {
  const code = (e as { code?: unknown; errno?: unknown } | null | undefined)?.code;
  if (typeof code === 'string' && /^E[A-Z0-9]+$/.test(code)) return code;
  const errno = (e as { errno?: unknown } | null | undefined)?.errno;
  return typeof errno === 'string' ? errno : undefined;
}

/** strerror() for an errno name; undefined for names not in the table. */
export const strerrorOf = (errno: string | undefined): string | undefined => (errno !== undefined ? STRERROR[errno] : undefined);

/** strerror() of an error's errno, else its message. */
export function strerror(e: unknown): string {
  return strerrorOf(errnoOf(e)) ?? (e instanceof Error ? e.message : String(e));
}
