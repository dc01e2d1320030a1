/** Where the iotests runner keeps what it downloads and what it writes. */
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root (this file is scripts/iotests/paths.ts). */
export const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Everything fetched or produced by a run; gitignored. */
export const CACHE_DIR = process.env.QIMG_IOTESTS_CACHE ?? join(REPO_ROOT, '.iotests-cache');

/** The extracted Debian source tree of qemu. */
export const SOURCE_DIR = join(CACHE_DIR, 'src', 'qemu');

/** QEMU's test directory inside the source tree. */
export const IOTESTS_DIR = join(SOURCE_DIR, 'tests', 'qemu-iotests');

/** The compiled CLI that the qemu-img/qemu-io links point at. */
export const QIMG_MAIN = join(REPO_ROOT, 'dist', 'cli', 'main.js');
