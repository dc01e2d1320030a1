import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isImageError } from '../../src/errors.js';
import { openImageFile } from '../../src/node.js';

const haveQemu = spawnSync('qemu-img', ['--version']).status === 0;
if (!haveQemu && process.env.CI) throw new Error('qemu-img is required when CI is set');

function overlay(dir: string, name: string, backing: string): string {
  const path = join(dir, name);
  const r = spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', backing, '-F', 'raw', path, '1M'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return path;
}

test('implicit files: json: and protocol names are never opened; deny and allowUnder confine the rest', { skip: !haveQemu }, async () => {
  const root = mkdtempSync(join(tmpdir(), 'qimg-policy-'));
  try {
    const inside = join(root, 'images');
    mkdirSync(inside);
    writeFileSync(join(inside, 'base.raw'), new Uint8Array(1 << 20));
    writeFileSync(join(root, 'secret.raw'), new Uint8Array(1 << 20).fill(7));
    symlinkSync(join(root, 'secret.raw'), join(inside, 'link.raw'));

    const refuse = async (path: string, policy: Parameters<typeof openImageFile>[1], pattern: RegExp) => {
      await assert.rejects(openImageFile(path, policy), (e: unknown) => isImageError(e, 'policy') && pattern.test((e as Error).message));
    };
    await refuse(overlay(inside, 'json.qcow2', 'json:{"driver":"raw","file":{"driver":"file","filename":"/etc/passwd"}}'), {}, /json: syntax/);
    await refuse(overlay(inside, 'nbd.qcow2', 'nbd://127.0.0.1:10809/x'), {}, /protocol 'nbd'/);

    const good = overlay(inside, 'good.qcow2', 'base.raw');
    await refuse(good, { policy: 'deny' }, /open policy/);
    const img = await openImageFile(good, { policy: { allowUnder: [inside] } });
    assert.equal(img.backing?.size, 1 << 20);
    await img.close();

    await refuse(overlay(inside, 'up.qcow2', '../secret.raw'), { policy: { allowUnder: [inside] } }, /outside/);
    await refuse(overlay(inside, 'abs.qcow2', join(root, 'secret.raw')), { policy: { allowUnder: [inside] } }, /outside/);
    // A link inside the directory that leads outside it is outside.
    await refuse(overlay(inside, 'link.qcow2', 'link.raw'), { policy: { allowUnder: [inside] } }, /outside/);
    // Metadata-only opens (info) never open the backing file at all.
    const meta = await openImageFile(join(inside, 'json.qcow2'), { backing: false, metadataOnly: true });
    assert.equal((await meta.info())['backing-filename']?.startsWith('json:'), true);
    await meta.close();
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('a backing chain that loops fails fast with a clear error', { skip: !haveQemu }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'qimg-loop-'));
  try {
    const a = join(dir, 'a.qcow2');
    const b = join(dir, 'b.qcow2');
    assert.equal(spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', a, '1M']).status, 0);
    assert.equal(spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', 'a.qcow2', '-F', 'qcow2', b, '1M']).status, 0);
    assert.equal(spawnSync('qemu-img', ['rebase', '-u', '-b', 'b.qcow2', '-F', 'qcow2', a]).status, 0);
    const t0 = Date.now();
    await assert.rejects(openImageFile(b), /creates an infinite loop/);
    assert.ok(Date.now() - t0 < 1000);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
