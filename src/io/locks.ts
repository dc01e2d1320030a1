/**
 * QEMU's image locks: one byte per permission on the image file, taken with
 * open file description locks so that qemu-img, qemu-io, qemu-nbd, a running
 * QEMU and qimg all see each other. Byte 100+bit is locked for every
 * permission held, byte 200+bit for every permission not shared; an opener
 * checks that nobody else holds the bytes that conflict with its own.
 *
 * Node's fs cannot take these locks; the optional ofdlock addon
 * (native/ofdlock) makes the two fcntl calls. Without it qimg opens images
 * unlocked and says so once, on the first open that could write.
 */
import { createRequire } from 'node:module';
import { constants } from 'node:os';
import { PERM_ALL, PERM_NAMES, PERM_RESIZE, PERM_WRITE, type Permissions } from '../block/perms.js';
import { ImageError } from '../errors.js';

const PERM_BASE = 100;
const SHARED_BASE = 200;
const EAGAIN = constants.errno.EAGAIN;

/** The addon's calls; both answer an errno value, 0 for success. */
export interface LockCalls {
  /** type 0 unlocks, 1 takes a shared lock, 2 an exclusive one. */
  setLock(fd: number, offset: number, type: 0 | 1 | 2): number;
  /** 0 when nobody else holds a lock that conflicts with the one described, EAGAIN when someone does. */
  testLock(fd: number, offset: number, exclusive: 0 | 1): number;
}

let calls: LockCalls | null | undefined;

function loadCalls(): LockCalls | null {
  if (calls === undefined) {
    try {
      // Two levels up from both src/io and dist/io.
      calls = process.platform === 'linux' ? (createRequire(import.meta.url)('../../native/ofdlock/build/Release/ofdlock.node') as LockCalls) : null;
    } catch {
      calls = null;
    }
  }
  return calls;
}

/** Replace the addon (tests); null behaves as a system without it, undefined reloads it. */
export function setLockCalls(c: LockCalls | null | undefined): void {
  calls = c;
  warned = false;
}

/** Whether qimg can take image locks here. */
export const lockingAvailable = (): boolean => loadCalls() !== null;

let warn = (message: string): void => {
  process.emitWarning(message);
};
let warned = false;

/** Where the one "no locking" warning goes (the CLI prints it in its own style). */
export function onLockWarning(fn: (message: string) => void): void {
  warn = fn;
}

const errnoNames = new Map(Object.entries(constants.errno).map(([k, v]) => [v, k]));
const ERRNO_TEXT: Record<string, string> = {
  EAGAIN: 'Resource temporarily unavailable',
  ENOLCK: 'No locks available',
  EINVAL: 'Invalid argument',
  EBADF: 'Bad file descriptor',
  EACCES: 'Permission denied',
  ENOSYS: 'Function not implemented',
  EOPNOTSUPP: 'Operation not supported',
};
const errnoText = (n: number): string => {
  const name = errnoNames.get(n) ?? `errno ${n}`;
  return ERRNO_TEXT[name] ?? name;
};

const bits = (mask: number): number[] => [0, 1, 2, 3].filter((i) => (mask & (1 << i)) !== 0);

/** The lock bytes one open file holds, changed the way QEMU changes them. */
export class FileLocks {
  private perm = 0;
  private shared = PERM_ALL;
  // What is really locked, so that only those bytes are released.
  private lockedPerm = 0;
  private lockedUnshared = 0;

  private constructor(
    private readonly fd: number,
    private readonly name: string,
    private readonly calls: LockCalls,
  ) {}

  /** Locks for `fd`, or null (after the one warning, for writers) when the addon is missing. */
  static forFile(fd: number, name: string, p: Permissions): FileLocks | null {
    const c = loadCalls();
    if (c) return new FileLocks(fd, name, c);
    if (!warned && (p.perm & (PERM_WRITE | PERM_RESIZE)) !== 0) {
      warned = true;
      warn(`image locking is unavailable (the ofdlock addon is not built), so '${name}' is opened without checking whether another process uses it`);
    }
    return null;
  }

  /**
   * Move to new permissions: lock the union of old and new, check that
   * nobody conflicts, then drop what is no longer needed. Locking before
   * checking means two openers racing each other cannot both miss the other.
   */
  set(p: Permissions): void {
    const grows = (this.perm | p.perm) !== this.perm || (this.shared & p.shared) !== this.shared;
    if (grows) {
      try {
        this.apply(this.perm | p.perm, (~this.shared | ~p.shared) & PERM_ALL, false);
        this.check(p);
      } catch (e) {
        this.tryApply(this.perm, ~this.shared & PERM_ALL);
        throw e;
      }
    }
    this.tryApply(p.perm, ~p.shared & PERM_ALL);
    this.perm = p.perm;
    this.shared = p.shared;
  }

  private apply(perm: number, unshared: number, unlock: boolean): void {
    const one = (base: number, want: number, locked: number): number => {
      for (let i = 0; i < PERM_NAMES.length; i++) {
        const bit = 1 << i;
        if (want & bit) {
          const r = this.calls.setLock(this.fd, base + i, 1);
          if (r !== 0) throw new ImageError('locked', `Failed to lock byte ${base + i}: ${errnoText(r)}`);
          locked |= bit;
        } else if (unlock && locked & bit) {
          // Releasing cannot conflict; a failure here changes nothing worth reporting.
          this.calls.setLock(this.fd, base + i, 0);
          locked &= ~bit;
        }
      }
      return locked;
    };
    this.lockedPerm = one(PERM_BASE, perm, this.lockedPerm);
    this.lockedUnshared = one(SHARED_BASE, unshared, this.lockedUnshared);
  }

  private tryApply(perm: number, unshared: number): void {
    try {
      this.apply(perm, unshared, true);
    } catch {
      // Only unlocking can happen here in practice.
    }
  }

  private check(p: Permissions): void {
    const fail = (r: number, what: string): ImageError => {
      const text = r === EAGAIN ? what : `${what}: ${errnoText(r)}`;
      return new ImageError('locked', `${text}\nIs another process using the image [${this.name}]?`);
    };
    // Someone refusing to share what we want...
    for (const i of bits(p.perm)) {
      const r = this.calls.testLock(this.fd, SHARED_BASE + i, 1);
      if (r !== 0) throw fail(r, `Failed to get "${PERM_NAMES[i]}" lock`);
    }
    // ...or holding what we refuse to share.
    for (const i of bits(~p.shared & PERM_ALL)) {
      const r = this.calls.testLock(this.fd, PERM_BASE + i, 1);
      if (r !== 0) throw fail(r, `Failed to get shared "${PERM_NAMES[i]}" lock`);
    }
  }
}
