/**
 * Backing files whose names hold a colon after a slash (`./image:base.qcow2`):
 * plain paths, resolved against the overlay's directory, printed by info as
 * qemu-img prints them.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { asQemu, qemuImg, qimg, requireTools, tmpDir } from '../helpers/tools.js';

for (const fmt of ['qcow2', 'qed']) {
  test(`${fmt}: create and info with a colon in the backing name`, (t) => {
    if (!requireTools(t)) return;
    const dirs = { ours: tmpDir(), theirs: tmpDir() };
    const outputs: Record<string, string[]> = { ours: [], theirs: [] };
    for (const side of ['ours', 'theirs'] as const) {
      const run = side === 'ours' ? qimg : qemuImg;
      const d = dirs[side];
      const steps = [
        ['create', '-f', fmt, join(d, `image:base.${fmt}`), '64M'],
        ['create', '-f', fmt, '-b', `./image:base.${fmt}`, '-F', fmt, join(d, `image:top.${fmt}`)],
        ['info', join(d, `image:top.${fmt}`)],
      ];
      for (const args of steps) {
        const r = run(args);
        // disk size: qemu's qed create writes its L1 table out, qimg leaves it sparse.
        const text = `${r.status}\n${asQemu(r.stdout)}${asQemu(r.stderr)}`.replaceAll(d, 'DIR').replace(/^disk size: .*\n/m, '');
        outputs[side]!.push(text);
      }
    }
    assert.match(outputs.theirs![2]!, /actual path: DIR\/\.\/image:base/);
    assert.deepEqual(outputs.ours, outputs.theirs);
  });
}
