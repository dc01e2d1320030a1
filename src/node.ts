/**
 * The Node entry point: the block layer wired to host files and Node's
 * codecs. `openImageFile('disk.qcow2')` is all most callers need.
 */
import { realpath } from 'node:fs/promises';
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
};

export type OpenFileOptions = Omit<OpenOptions, 'host'> & { host?: Host };

export function openImageFile(path: string, opts: OpenFileOptions = {}): Promise<Image> {
  return openImage(path, { ...opts, host: opts.host ?? nodeHost });
}

export { nodeCodecs, FileStorage };
