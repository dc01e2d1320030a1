/**
 * A `qimg io` process killed with SIGKILL in the middle of a long write
 * workload leaves an image that qemu-img check calls clean or leak-only
 * (exit 0 or 3), for several image kinds and kill times.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { qimgCommand } from '../helpers/cli.js';

const haveQemu = spawnSync('qemu-img', ['--version']).status === 0;
if (!haveQemu && process.env.CI) throw new Error('qemu-img is required when CI is set');

/** A long workload: allocating writes, rewrites, zeroing, discards, compressed writes, flushes. */
function workload(compressed: boolean): string[] {
  const cmds: string[] = [];
  for (let i = 0; i < 400; i++) {
    const off = ((i * 7919) % 1000) * 65536;
    switch (i % 8) {
      case 0:
      case 1:
      case 2:
        cmds.push('-c', `write -P ${i % 250} ${off} ${65536 + ((i * 512) % 65536)}`);
        break;
      case 3:
        cmds.push('-c', `write -z ${off + 4096} 131072`);
        break;
      case 4:
        cmds.push('-c', `discard ${off} 65536`);
        break;
      case 5:
        cmds.push('-c', compressed ? `write -c -P 3 ${((i * 104729) % 1000) * 65536} 65536` : `write -P 9 ${off + 512} 1000`);
        break;
      case 6:
        cmds.push('-c', 'flush');
        break;
      default:
        cmds.push('-c', `write -z -u ${off} 65536`);
    }
  }
  return cmds;
}

const kinds = [
  { name: 'default', opts: 'cluster_size=65536', compressed: true },
  { name: 'lazy refcounts', opts: 'lazy_refcounts=on', compressed: false },
  { name: '4K clusters, 1-bit refcounts', opts: 'cluster_size=4096,refcount_bits=1', compressed: false },
];

for (const k of kinds) {
  test(`SIGKILL during qimg io leaves a consistent image: ${k.name}`, { skip: !haveQemu }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'qimg-kill-'));
    try {
      for (const delay of [60, 150, 300, 600]) {
        const img = join(dir, `k${delay}.qcow2`);
        assert.equal(spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', k.opts, img, '64M']).status, 0);
        const child = spawn(...qimgCommand(['io', ...workload(k.compressed), img]), { stdio: 'ignore' });
        const exited = new Promise<string | null>((r) => child.on('exit', (_code, signal) => r(signal)));
        await new Promise((r) => setTimeout(r, delay));
        child.kill('SIGKILL');
        const signal = await exited;
        if (delay <= 150) assert.equal(signal, 'SIGKILL', 'the workload finished before the kill: make it longer');
        const r = spawnSync('qemu-img', ['check', img], { encoding: 'utf8' });
        assert.ok(r.status === 0 || r.status === 3, `killed after ${delay} ms: qemu-img check exit ${r.status}\n${r.stdout}${r.stderr}`);
        // And qimg can open it for writing again (a dirty lazy-refcount image is repaired on open).
        const w = spawnSync(...qimgCommand(['io', '-c', 'write -P 5 0 4k', '-c', 'read -P 5 0 4k', img]), { encoding: 'utf8' });
        assert.equal(w.status, 0, w.stderr);
        const after = spawnSync('qemu-img', ['check', img], { encoding: 'utf8' });
        assert.ok(after.status === 0 || after.status === 3, after.stdout);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}
