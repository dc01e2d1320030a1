/**
 * Storage on a host file, with positional I/O. Callers coalesce their
 * requests (the block layer merges contiguous clusters), so one call here is
 * one syscall for a whole run of data.
 */
import { FallocateMode, tryFallocate } from './fallocate.js';
import { open, type FileHandle } from 'node:fs/promises';
import { constants, read as fsRead, readSync, write as fsWrite, writeSync } from 'node:fs';
import { createRequire } from 'node:module';
import { imagePermissions, type Permissions } from '../block/perms.js';
import { FileLocks } from './locks.js';
import { errnoOf, strerror } from '../errno.js';
import { ImageError, ioError } from '../errors.js';
import type { Storage } from './storage.js';

/**
 * SEEK_DATA/SEEK_HOLE come from fs-ext, an optional native module: Node's fs
 * has no lseek. Without it, files report no holes (everything is data).
 */
interface FsExt {
  seek(fd: number, offset: number, whence: number, cb: (err: NodeJS.ErrnoException | null, pos: number) => void): void;
}
const SEEK_DATA = 3;
const SEEK_HOLE = 4;
let fsExt: FsExt | null | undefined;
function loadFsExt(): FsExt | null {
  if (fsExt === undefined) {
    try {
      fsExt = process.platform === 'linux' ? (createRequire(import.meta.url)('fs-ext') as FsExt) : null;
    } catch {
      fsExt = null;
    }
  }
  return fsExt;
}
function seek(ext: FsExt, fd: number, offset: number, whence: number): Promise<number> {
  return new Promise((resolve, reject) => ext.seek(fd, offset, whence, (err, pos) => (err ? reject(err) : resolve(pos))));
}

export interface FileOpenOptions {
  writable?: boolean;
  /** Create the file if missing (and truncate it when `truncate` is set). */
  create?: boolean;
  truncate?: boolean;
  /**
   * qemu's cache=unsafe: flush() does nothing. qemu-img uses it for convert
   * targets by default; a half-written output is worthless anyway.
   */
  unsafe?: boolean;
  /**
   * QEMU's image locks to take before anything is read or truncated
   * (callers that learn the format later narrow them with setPermissions).
   * Writable opens default to a raw writer's: nothing can write a file
   * whose user refuses writers, whichever path opened it.
   */
  permissions?: Permissions;
  /** The name the storage reports (default: `path`), e.g. a data file's name as its image records it. */
  name?: string;
}

export class FileStorage implements Storage {
  readonly name: string;
  readonly writable: boolean;
  private readonly fh: FileHandle;
  private readonly unsafe: boolean;
  private locks: FileLocks | null | undefined;
  /** Written to since the last sync began. */
  private dirty = false;
  private syncFailure: ImageError | undefined;

  private constructor(name: string, fh: FileHandle, writable: boolean, unsafe: boolean) {
    this.name = name;
    this.fh = fh;
    this.writable = writable;
    this.unsafe = unsafe;
  }

  static async open(path: string, opts: FileOpenOptions = {}): Promise<FileStorage> {
    const writable = opts.writable ?? false;
    let flags = writable ? constants.O_RDWR : constants.O_RDONLY;
    if (opts.create) flags |= constants.O_CREAT;
    let fh: FileHandle;
    try {
      // No O_TRUNC: a file another process uses must survive the refusal.
      fh = await open(path, flags, 0o644);
    } catch (e) {
      throw fileError(path, e);
    }
    const st = new FileStorage(opts.name ?? path, fh, writable, opts.unsafe ?? false);
    try {
      const permissions = opts.permissions ?? (writable ? imagePermissions('raw', { writable: true }) : undefined);
      if (permissions) await st.setPermissions(permissions);
      if (opts.truncate) await fh.truncate(0);
    } catch (e) {
      await fh.close().catch(() => {});
      throw e instanceof ImageError ? e : fileError(path, e);
    }
    return st;
  }

  async setPermissions(p: Permissions): Promise<void> {
    if (this.locks === undefined) this.locks = FileLocks.forFile(this.fh.fd, this.name, p);
    this.locks?.set(p);
  }

  // Every failure leaves here as ImageError('io') with the errno and its
  // strerror text: callers print qemu's "error while writing at byte N: No
  // space left on device" instead of Node's "ENOSPC: no space left on device, write".
  async size(): Promise<number> {
    try {
      return (await this.fh.stat()).size;
    } catch (e) {
      throw ioError(e);
    }
  }

  // Plain fs.read/fs.write on the descriptor: the FileHandle promise API
  // costs about twice as much per call, and convert makes many calls.
  async read(into: Uint8Array, offset: number): Promise<void> {
    let done = 0;
    try {
      while (done < into.length) {
        const n = into.length <= SYNC_IO_MAX ? readSync(this.fh.fd, into, done, into.length - done, offset + done) : await pread(this.fh.fd, into, done, into.length - done, offset + done);
        if (n === 0) {
          into.fill(0, done);
          return;
        }
        done += n;
      }
    } catch (e) {
      throw ioError(e);
    }
  }

  async write(data: Uint8Array, offset: number): Promise<void> {
    this.dirty = true;
    let done = 0;
    try {
      while (done < data.length) {
        const n = data.length <= SYNC_IO_MAX ? writeSync(this.fh.fd, data, done, data.length - done, offset + done) : await pwrite(this.fh.fd, data, done, data.length - done, offset + done);
        // A write that makes no progress would loop forever; qemu's file
        // driver fails a short write with EINVAL.
        if (n === 0) throw Object.assign(new Error('short write'), { code: 'EINVAL' });
        done += n;
      }
    } catch (e) {
      throw ioError(e);
    }
  }

  /**
   * Make [offset, offset+length) read as zero: a hole where `mayUnmap`
   * allows and the file system can punch one, else zeroed in place
   * (FALLOC_FL_ZERO_RANGE), else zeros written, as QEMU's file driver does.
   */
  async writeZeroes(offset: number, length: number, opts: { mayUnmap?: boolean } = {}): Promise<void> {
    if (length <= 0) return;
    this.dirty = true;
    try {
      const end = Math.min(offset + length, await this.size());
      // Past the end nothing needs zeroing, but the file must grow to cover the range.
      if (end > offset) {
        const done =
          (opts.mayUnmap === true && tryFallocate(this.fh.fd, FallocateMode.PunchHole, offset, end - offset)) ||
          tryFallocate(this.fh.fd, FallocateMode.ZeroRange, offset, end - offset);
        if (!done) await this.writeZeroBytes(offset, end - offset);
      }
      if (offset + length > end) await this.fh.truncate(offset + length);
    } catch (e) {
      throw ioError(e);
    }
  }

  /** Deallocate a range (it then reads as zero); false when the host cannot, and nothing changed. */
  async punchHole(offset: number, length: number): Promise<boolean> {
    try {
      const ok = tryFallocate(this.fh.fd, FallocateMode.PunchHole, offset, length);
      if (ok) this.dirty = true;
      return ok;
    } catch (e) {
      throw ioError(e);
    }
  }

  /** Allocate blocks for a range without writing them (preallocation=falloc); false when the host cannot. */
  async allocate(offset: number, length: number): Promise<boolean> {
    try {
      const ok = tryFallocate(this.fh.fd, FallocateMode.Allocate, offset, length);
      if (ok) this.dirty = true;
      return ok;
    } catch (e) {
      throw ioError(e);
    }
  }

  private async writeZeroBytes(offset: number, length: number): Promise<void> {
    const chunk = new Uint8Array(Math.min(length, 1 << 20));
    for (let pos = 0; pos < length; pos += chunk.length) await this.write(chunk.subarray(0, Math.min(chunk.length, length - pos)), offset + pos);
  }

  async truncate(size: number): Promise<void> {
    this.dirty = true;
    try {
      await this.fh.truncate(size);
    } catch (e) {
      throw ioError(e);
    }
  }

  /**
   * As qemu's file driver: no sync when nothing was written since the last
   * one, and once a sync has failed every later one fails the same way.
   * After a failed fsync the kernel may have dropped the dirty pages and
   * report the next fsync as clean, so success would be a lie.
   */
  async flush(): Promise<void> {
    if (this.unsafe) return;
    if (this.syncFailure) throw this.syncFailure;
    if (!this.dirty) return;
    this.dirty = false;
    try {
      await this.fh.datasync();
    } catch (e) {
      this.syncFailure = ioError(e);
      throw this.syncFailure;
    }
  }

  // Closing the descriptor releases its locks: they belong to this open file description only.
  async close(): Promise<void> {
    try {
      await this.fh.close();
    } catch (e) {
      throw ioError(e);
    }
  }

  async allocation(offset: number, length: number): Promise<{ data: boolean; length: number }> {
    const ext = loadFsExt();
    if (!ext) return { data: true, length };
    try {
      const data = await seek(ext, this.fh.fd, offset, SEEK_DATA);
      if (data > offset) return { data: false, length: Math.min(length, data - offset) };
      const hole = await seek(ext, this.fh.fd, offset, SEEK_HOLE);
      return { data: true, length: Math.min(length, Math.max(hole - offset, 1)) };
    } catch (e) {
      // ENXIO: no data at or after offset, so the rest is a hole.
      if ((e as NodeJS.ErrnoException).code === 'ENXIO') return { data: false, length };
      return { data: true, length };
    }
  }

  async allocatedSize(): Promise<number | undefined> {
    try {
      return (await this.fh.stat()).blocks * 512;
    } catch (e) {
      throw ioError(e);
    }
  }
}

/**
 * Requests up to this size go straight to pread/pwrite on the main thread:
 * a hop through libuv's thread pool costs more than a small page-cache copy.
 */
const SYNC_IO_MAX = 64 * 1024;

function pread(fd: number, buf: Uint8Array, at: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => fsRead(fd, buf, at, length, position, (e, n) => (e ? reject(e) : resolve(n))));
}

function pwrite(fd: number, buf: Uint8Array, at: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => fsWrite(fd, buf, at, length, position, (e, n) => (e ? reject(e) : resolve(n))));
}

/** A failed open as an ImageError with qemu's "Could not open 'X': <strerror>" wording. */
export function fileError(path: string, e: unknown): ImageError {
  const errno = errnoOf(e);
  return new ImageError(errno === 'ENOENT' ? 'not-found' : 'io', `Could not open '${path}': ${strerror(e)}`, { cause: e, errno });
}
