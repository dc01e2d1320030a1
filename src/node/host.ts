/**
 * The block layer's Host on Node: files through FileStorage (locked as qemu
 * locks them), qemu's rules for paths an image names, Node's codecs, and
 * temporary files for snapshot mode.
 */
import { mkdtemp, realpath, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import '../formats/index.js';
import { isRemoteName, type Host } from '../block/open.js';
import { HttpStorage, type HttpStorageOptions } from '../io/http-storage.js';
import type { Storage } from '../io/storage.js';
import { CREATE_PERMISSIONS } from '../block/perms.js';
import { ImageError, isImageError } from '../errors.js';
import { strerror } from '../errno.js';
import { nodeCodecs } from '../io/codecs.js';
import { nodeCrypto } from '../io/crypto.js';
import { FileStorage } from '../io/file.js';

/** A `proto:` prefix: a colon before any slash (so `./a:b` and `dir/a:b` are plain paths). */
export function hasProtocolPrefix(name: string): boolean {
  const m = /[:/]/.exec(name);
  return m?.[0] === ':';
}

/**
 * qemu's path_combine: a relative backing name is relative to the image's
 * directory, joined as text (`dir/./b` stays so; qemu prints it that way).
 */
export function resolveImplicitPath(imagePath: string, name: string): string {
  // Relative to an image read from a URL: a URL (qemu's curl driver does the same).
  if (isRemoteName(imagePath) && !hasProtocolPrefix(name)) return new URL(name, imagePath).href;
  if (isAbsolute(name) || hasProtocolPrefix(name)) return name;
  const slash = imagePath.lastIndexOf('/');
  return slash < 0 ? name : imagePath.slice(0, slash + 1) + name;
}

/** Create (or truncate) a file for a new image, with qemu's message when that fails. */
export async function createFileStorage(path: string): Promise<FileStorage> {
  try {
    return await FileStorage.open(path, { writable: true, create: true, truncate: true, permissions: CREATE_PERMISSIONS });
  } catch (e) {
    if (isImageError(e, 'locked')) throw e;
    const io = e instanceof ImageError ? e : undefined;
    throw new ImageError(io?.code === 'not-found' ? 'not-found' : 'io', `Could not create '${path}': ${strerror((e as { cause?: unknown }).cause ?? e)}`, {
      cause: e,
      errno: io?.errno,
    });
  }
}

/** A URL as a read-only HTTP range source; a writable open is refused as qemu's curl driver refuses it. */
async function openUrl(url: string, writable: boolean, http: HttpStorageOptions | undefined): Promise<Storage> {
  if (writable) throw new ImageError('read-only', 'http driver does not support writes');
  return HttpStorage.open(url, http);
}

export const nodeHost: Host = {
  openStorage: (path, { writable, unsafe, name, http }) => (isRemoteName(path) ? openUrl(path, writable, http) : FileStorage.open(path, { writable, unsafe, name })),
  createStorage: createFileStorage,
  resolve: resolveImplicitPath,
  identity: async (path) => {
    if (isRemoteName(path)) return path;
    try {
      return await realpath(path);
    } catch {
      return path;
    }
  },
  isInside: async (path, dir) => {
    const real = async (p: string) => {
      try {
        return await realpath(p);
      } catch {
        return resolve(p);
      }
    };
    const rel = relative(await real(dir), await real(path));
    return rel !== '' && !rel.startsWith(`..${sep}`) && rel !== '..' && !isAbsolute(rel);
  },
  codecs: nodeCodecs,
  crypto: nodeCrypto,
  temporaryStorage: async () => {
    // qemu's get_tmp_filename: $TMPDIR, else /var/tmp. A private directory
    // keeps the name unguessable; the file is unlinked once open, so it goes
    // away on close and even on a crash.
    const dir = await mkdtemp(join(process.env.TMPDIR || (process.platform === 'win32' ? tmpdir() : '/var/tmp'), 'qimg-snapshot-'));
    const name = join(dir, 'overlay.qcow2');
    try {
      const storage = await FileStorage.open(name, { writable: true, create: true });
      if (process.platform !== 'win32') await rm(dir, { recursive: true, force: true });
      return { name, storage };
    } catch (e) {
      await rm(dir, { recursive: true, force: true });
      throw e;
    }
  },
};
