/**
 * compression_level (a qimg extension): every level qimg writes, through
 * convert, convert to a pipe and an open image, decodes in qemu-img; a
 * stronger level gives a smaller image; a level that does not apply is
 * refused before any file is made.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { convertImageFile, createImageFile, openImageFile } from '../../src/node.js';
import { isImageError } from '../../src/errors.js';
import { qemuImg, qimg, requireTools, tmpDir } from '../helpers/tools.js';
import { qimgCommand } from '../helpers/cli.js';

/** 4 MiB of text-like data (LCG-chosen words) and a zero MiB in the middle. */
function source(dir: string): string {
  const words = ['disk', 'image', 'cluster', 'table', 'guest', 'zstd', 'zlib', 'level', 'the', 'of', 'and'];
  const b = Buffer.alloc(4 << 20);
  let x = 12345;
  for (let at = 0; at < b.length; ) {
    if (at === 1 << 20) at += 1 << 20;
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    at += b.write(words[(x >>> 16) % words.length]! + (x % 5 ? ' ' : '\n'), at);
  }
  const p = join(dir, 'src.raw');
  writeFileSync(p, b);
  return p;
}

function identical(dir: string, a: string, b: string): void {
  const c = qemuImg(['compare', '-f', 'raw', '-F', 'qcow2', a, b], { cwd: dir });
  assert.equal(c.status, 0, c.stdout + c.stderr);
  const k = qemuImg(['check', b], { cwd: dir });
  assert.equal(k.status, 0, k.stdout + k.stderr);
}

test('convert -c at every level: qemu-img reads each, and stronger levels are smaller', (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const src = source(dir);
  for (const [type, levels] of [['zlib', [1, 6, 9]], ['zstd', [-3, 1, 3, 19]]] as const) {
    const size = new Map<number, number>();
    for (const level of levels) {
      const out = join(dir, `${type}${level}.qcow2`);
      const r = qimg(['convert', '-c', '-O', 'qcow2', '-o', `compression_type=${type},compression_level=${level}`, src, out]);
      assert.equal(r.status, 0, r.stderr);
      identical(dir, src, out);
      size.set(level, statSync(out).size);
    }
    const [weakest, strongest] = [levels[0], levels.at(-1)!];
    assert.ok(size.get(strongest)! < size.get(weakest)!, `${type}: level ${strongest} (${size.get(strongest)}) < level ${weakest} (${size.get(weakest)})`);
  }
  // Without a level, qemu's default (zlib 6). Payloads are packed in the order compressions finish,
  // so the file size varies by a few bytes of sector padding from run to run: compare closely.
  const dflt = join(dir, 'default.qcow2');
  assert.equal(qimg(['convert', '-c', '-O', 'qcow2', src, dflt]).status, 0);
  const [d, six, one] = [dflt, join(dir, 'zlib6.qcow2'), join(dir, 'zlib1.qcow2')].map((p) => statSync(p).size) as [number, number, number];
  assert.ok(Math.abs(d - six) < six * 0.005 && Math.abs(d - six) < Math.abs(d - one), `default ${d}, level 6 ${six}, level 1 ${one}`);
});

test('convert -c to a pipe and -n into an existing image take the level too', (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const src = source(dir);
  const [cmd, args] = qimgCommand(['convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zstd,compression_level=19', src, '-']);
  const piped = spawnSync(cmd, args, { maxBuffer: 64 << 20 });
  assert.equal(piped.status, 0, String(piped.stderr));
  writeFileSync(join(dir, 'piped.qcow2'), piped.stdout);
  identical(dir, src, join(dir, 'piped.qcow2'));

  const target = join(dir, 'existing.qcow2');
  assert.equal(qemuImg(['create', '-f', 'qcow2', '-o', 'compression_type=zstd', target, '4M']).status, 0);
  const r = qimg(['convert', '-n', '-c', '-O', 'qcow2', '-o', 'compression_level=19', src, target]);
  assert.equal(r.status, 0, r.stderr);
  identical(dir, src, target);
  // qemu's rule still holds for real creation options.
  const bad = qimg(['convert', '-n', '-c', '-O', 'qcow2', '-o', 'compression_level=19,cluster_size=4k', src, target]);
  assert.equal(bad.stderr, 'qimg: -o has no effect when skipping image creation\n');
});

test('levels that do not apply are refused, and no output file is left', (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const src = source(dir);
  const out = join(dir, 'out.qcow2');
  const cases: Array<[string[], string]> = [
    [['-c', '-o', 'compression_level=10'], "qimg: Parameter 'compression_level' must be 1 to 9 for zlib compression, not '10'\n"],
    [['-c', '-o', 'compression_level=0'], "qimg: Parameter 'compression_level' must be 1 to 9 for zlib compression, not '0'\n"],
    [['-c', '-o', 'compression_type=zstd,compression_level=23'], "qimg: Parameter 'compression_level' must be 1 to 22, or -131072 to -1 for faster ones for zstd compression, not '23'\n"],
    [['-c', '-o', 'compression_level=fast'], "qimg: Parameter 'compression_level' expects an integer\n"],
    [['-o', 'compression_level=3'], "qimg: 'compression_level' applies to compressed output only (-c)\n"],
  ];
  for (const [opts, message] of cases) {
    const r = qimg(['convert', '-O', 'qcow2', ...opts, src, out]);
    assert.deepEqual([r.status, r.stderr], [1, message], opts.join(' '));
    assert.equal(existsSync(out), false, `${opts.join(' ')} leaves no file`);
  }
  // qemu-img create has no such option, and neither does qimg create: the image would not record it.
  const c = qimg(['create', '-f', 'qcow2', '-o', 'compression_level=3', out, '1M']);
  assert.equal(c.status, 1);
  assert.match(c.stderr, /Invalid parameter 'compression_level'/);
});

test('the library: convertImageFile and an open image write at the level; formats without compression refuse it', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const src = source(dir);
  const strong = join(dir, 'strong.qcow2');
  const weak = join(dir, 'weak.qcow2');
  await convertImageFile(src, strong, { format: 'qcow2', compress: true, compressionLevel: 9 });
  await convertImageFile(src, weak, { format: 'qcow2', compress: true, compressionLevel: 1 });
  identical(dir, src, strong);
  assert.ok(statSync(strong).size < statSync(weak).size);

  const written = join(dir, 'written.qcow2');
  await createImageFile(written, { format: 'qcow2', size: 4 << 20, compressionType: 'zstd' });
  const img = await openImageFile(written, { writable: true, compressionLevel: 19 });
  const data = (await openImageFile(src, { format: 'raw' }));
  const buf = new Uint8Array(4 << 20);
  await data.read(0, buf);
  await data.close();
  await img.write(0, buf, { compressed: true });
  await img.close();
  identical(dir, src, written);

  await assert.rejects(openImageFile(written, { writable: true, compressionLevel: 30 }), (e) => isImageError(e, 'bad-argument'));
  const qed = join(dir, 'x.qed');
  await createImageFile(qed, { format: 'qed', size: 1 << 20 });
  await assert.rejects(openImageFile(qed, { writable: true, compressionLevel: 3 }), /Format 'qed' has no compressed clusters/);
});
