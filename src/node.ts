/**
 * The Node entry point: the block layer wired to host files and Node's
 * codecs. `openImageFile('disk.qcow2')` is all most callers need.
 */
import { mkdtemp, realpath, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import './formats/index.js';
import { openImage, type Host, type OpenOptions } from './block/open.js';
import type { Image } from './block/image.js';
import { nodeCodecs } from './io/codecs.js';
import { FileStorage } from './io/file.js';

/** qemu's path_combine: a relative backing name is relative to the image's directory. */
export function resolveImplicitPath(imagePath: string, name: string): string {
  if (isAbsolute(name) || name.includes(':')) return name;
  const dir = dirname(imagePath);
  return dir === '.' && !imagePath.startsWith('./') ? name : join(dir, name);
}

export const nodeHost: Host = {
  openStorage: (path, { writable, unsafe, name }) => FileStorage.open(path, { writable, unsafe, name }),
  resolve: resolveImplicitPath,
  identity: async (path) => {
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

export type OpenFileOptions = Omit<OpenOptions, 'host'> & { host?: Host };

export function openImageFile(path: string, opts: OpenFileOptions = {}): Promise<Image> {
  return openImage(path, { ...opts, host: opts.host ?? nodeHost });
}

export { nodeCodecs, FileStorage };
