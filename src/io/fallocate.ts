/**
 * fallocate(2) through the native addon (native/ofdlock, which also takes
 * QEMU's image locks): Node's fs has no call that punches a hole or
 * allocates blocks without writing them. Where the addon is not built, or
 * the file system says no, callers fall back to writing zeros, which gives
 * the same bytes with more I/O, as QEMU's file driver does.
 */
import { createRequire } from 'node:module';
import { constants } from 'node:os';

export const FallocateMode = {
  /** Allocate the blocks (the file grows to cover them). */
  Allocate: 0,
  /** Deallocate; the range reads as zero, the size is kept. */
  PunchHole: 1,
  /** Zero in place, without writing data blocks. */
  ZeroRange: 2,
} as const;
export type FallocateMode = (typeof FallocateMode)[keyof typeof FallocateMode];

type FallocateCall = (fd: number, mode: FallocateMode, offset: number, length: number) => number;

let call: FallocateCall | null | undefined;

function load(): FallocateCall | null {
  if (call === undefined) {
    try {
      // Two levels up from both src/io and dist/io.
      const addon = process.platform === 'linux' ? (createRequire(import.meta.url)('../../native/ofdlock/build/Release/ofdlock.node') as { fallocate?: FallocateCall }) : {};
      call = addon.fallocate ?? null;
    } catch {
      call = null;
    }
  }
  return call;
}

/** Replace the call (tests); null behaves as a system without it, undefined reloads it. */
export function setFallocateCall(c: FallocateCall | null | undefined): void {
  call = c;
}

/**
 * fallocate on `fd`; true when done. False when it cannot be done here (no
 * addon, EOPNOTSUPP, ENOSYS, EINVAL from a file system without the mode):
 * the caller then writes zeros. Other failures (ENOSPC, EIO) throw as errors
 * with their errno code, as fs calls do.
 */
export function tryFallocate(fd: number, mode: FallocateMode, offset: number, length: number): boolean {
  const f = load();
  if (!f || length <= 0) return false;
  const errno = f(fd, mode, offset, length);
  if (errno === 0) return true;
  const name = errnoName(errno);
  if (name === 'EOPNOTSUPP' || name === 'ENOTSUP' || name === 'ENOSYS' || name === 'EINVAL' || name === 'ENODEV') return false;
  throw Object.assign(new Error(`fallocate: ${name ?? errno}`), { code: name ?? String(errno), errno: -errno });
}

function errnoName(n: number): string | undefined {
  for (const [k, v] of Object.entries(constants.errno)) if (v === n) return k;
  return undefined;
}
