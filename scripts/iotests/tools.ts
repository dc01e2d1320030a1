/**
 * The two sets of programs a run points the harness at: the real qemu-img and
 * qemu-io, or links named qemu-img/qemu-io to qimg's CLI (qimg takes on the
 * personality of the name it is started under). Both use the real qemu-nbd,
 * and stubs for what the harness insists exists but the selected tests never
 * start: a system emulator and the storage daemon.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, cpSync, existsSync, mkdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CACHE_DIR, QIMG_MAIN, REPO_ROOT } from './paths.js';

/**
 * real: QEMU's tools; qimg: qimg as both; img-only (a diagnostic): qimg as
 * qemu-img with the real qemu-io, which isolates the qemu-img subcommands.
 */
export type Toolset = 'real' | 'qimg' | 'img-only';

export interface Tools {
  QEMU_PROG: string;
  QEMU_IMG_PROG: string;
  QEMU_IO_PROG: string;
  QEMU_NBD_PROG: string;
  QSD_PROG: string;
  binDir: string;
}

/** Full path of a program on PATH. */
export function which(name: string): string {
  const r = spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' });
  const p = r.stdout.trim();
  if (r.status !== 0 || p === '') throw new Error(`${name} not found on PATH`);
  return p;
}

// `check` asks the emulator for its machine list once; anything else fails loudly.
const QEMU_STUB = `#!/bin/sh
if [ "$1" = "-machine" ] && [ "$2" = "help" ]; then
  echo "Supported machines are:"
  echo "pc                   Standard PC (default)"
  exit 0
fi
echo "qemu-system stub: this run has no VM" >&2
exit 1
`;

const QSD_STUB = `#!/bin/sh
echo "qemu-storage-daemon stub: this run has no storage daemon" >&2
exit 1
`;

function link(target: string, path: string): void {
  rmSync(path, { force: true });
  symlinkSync(target, path);
}

function script(text: string, path: string): void {
  writeFileSync(path, text);
  chmodSync(path, 0o755);
}

export function prepareTools(set: Toolset): Tools {
  const binDir = join(CACHE_DIR, 'bin', set);
  mkdirSync(binDir, { recursive: true });
  let qimgMain = QIMG_MAIN;
  if (set !== 'real') {
    if (!existsSync(QIMG_MAIN)) throw new Error(`${QIMG_MAIN} missing: run npm run build`);
    // A copy of the build, so a rebuild while the suite runs cannot change what it runs.
    // Inside the repository, so the copy still finds node_modules.
    const snapshot = join(CACHE_DIR, 'build', set);
    rmSync(snapshot, { recursive: true, force: true });
    cpSync(join(REPO_ROOT, 'dist'), join(snapshot, 'dist'), { recursive: true });
    copyFileSync(join(REPO_ROOT, 'package.json'), join(snapshot, 'package.json'));
    // The native addon (locks, fallocate) is found next to dist/.
    if (existsSync(join(REPO_ROOT, 'native'))) symlinkSync(join(REPO_ROOT, 'native'), join(snapshot, 'native'));
    qimgMain = join(snapshot, 'dist', 'cli', 'main.js');
    chmodSync(qimgMain, 0o755);
  }
  link(set === 'real' ? which('qemu-img') : qimgMain, join(binDir, 'qemu-img'));
  link(set === 'qimg' ? qimgMain : which('qemu-io'), join(binDir, 'qemu-io'));
  link(which('qemu-nbd'), join(binDir, 'qemu-nbd'));
  script(QEMU_STUB, join(binDir, 'qemu-system-x86_64'));
  script(QSD_STUB, join(binDir, 'qemu-storage-daemon'));
  return {
    QEMU_PROG: join(binDir, 'qemu-system-x86_64'),
    QEMU_IMG_PROG: join(binDir, 'qemu-img'),
    QEMU_IO_PROG: join(binDir, 'qemu-io'),
    QEMU_NBD_PROG: join(binDir, 'qemu-nbd'),
    QSD_PROG: join(binDir, 'qemu-storage-daemon'),
    binDir,
  };
}
