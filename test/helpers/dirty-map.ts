/**
 * A persistent bitmap's dirty extents as QEMU itself reads them: the image
 * served read-only by qemu-nbd with -B, mapped by nbdinfo.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';

export const haveNbdTools = spawnSync('nbdinfo', ['--version']).status === 0 && spawnSync('qemu-nbd', ['--version']).status === 0;

/** `start length dirty|clean` lines, one per extent. */
export function dirtyMap(file: string, bitmap: string): string {
  const sock = `${file}.sock`;
  // Without --persistent, qemu-nbd exits when nbdinfo disconnects.
  const s = spawnSync('qemu-nbd', ['--fork', '-r', '-B', bitmap, '-k', sock, '-f', 'qcow2', file], { encoding: 'utf8' });
  assert.equal(s.status, 0, s.stderr);
  const r = spawnSync('nbdinfo', [`--map=qemu:dirty-bitmap:${bitmap}`, `nbd+unix:///?socket=${sock}`], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
}
