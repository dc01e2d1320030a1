/**
 * qemu-img convert -p: the meter advances once per copied chunk of up to
 * 2 MiB (qemu-img's IO_BUF_SIZE), so the printed percentages are qemu's
 * (iotest 086).
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { qemuImg, qemuIo, qimg, requireTools, tmpDir } from '../helpers/tools.js';

const layouts: Record<string, string[]> = {
  'four 1 MiB extents': ['write 0 1M', 'write 2M 1M', 'write 4M 1M', 'write 32M 1M'],
  'a 5 MiB extent and a 64 KiB one': ['write -P 3 1M 5M', 'write -P 4 100M 64k'],
};

for (const fmt of ['qcow2', 'raw']) {
  for (const [name, writes] of Object.entries(layouts)) {
    test(`convert -p ${fmt}, ${name}: the same meter as qemu-img`, (t) => {
      if (!requireTools(t)) return;
      const d = tmpDir();
      const src = join(d, `src.${fmt}`);
      assert.equal(qemuImg(['create', '-q', '-f', fmt, src, '128M']).status, 0);
      for (const w of writes) assert.equal(qemuIo(['-f', fmt, '-c', w, src]).status, 0);
      const theirs = qemuImg(['convert', '-p', '-f', fmt, '-O', fmt, src, join(d, 'theirs')]);
      const ours = qimg(['convert', '-p', '-f', fmt, '-O', fmt, src, join(d, 'ours')]);
      assert.equal(theirs.status, 0, theirs.stderr);
      assert.match(theirs.stdout, /\(100\.00\/100%\)/);
      assert.equal(ours.stdout, theirs.stdout);
      assert.equal(ours.status, 0);
      assert.equal(qemuImg(['compare', '-q', join(d, 'ours'), join(d, 'theirs')]).status, 0);
    });
  }
}
