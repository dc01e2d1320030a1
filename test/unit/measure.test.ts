import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { OptionBag } from '../../src/block/options.js';
import { measure } from '../../src/index.js';
import { preallocSize, refcountMetadataSize } from '../../src/formats/qcow2/measure.js';

const haveQemu = spawnSync('qemu-img', ['--version']).status === 0;
if (!haveQemu && process.env.CI) throw new Error('qemu-img is required when CI is set');

function qemuMeasure(args: string[]): { required: number; 'fully-allocated': number } | string {
  const r = spawnSync('qemu-img', ['measure', '--output=json', ...args], { encoding: 'utf8' });
  return r.status === 0 ? JSON.parse(r.stdout) : r.stderr.trim().split('\n')[0]!.replace(/^qemu-img: /, '');
}

test('refcount metadata for a 1 GiB image with 64 KiB clusters (worked example)', () => {
  // 2 GiB, 64 KiB clusters, 16-bit refcounts: 64K header + 256K L2 + 64K L1 + 192K refcounts.
  assert.equal(preallocSize(2 ** 31, 65536, 4, false) - 2 ** 31, 576 * 1024);
  assert.equal(refcountMetadataSize(0, 65536, 4), 0);
});

test('measure --size equals qemu-img across cluster sizes, refcount widths, extended L2 and preallocation', { skip: !haveQemu }, async () => {
  const sizes = ['0', '1', '1G', '1000000', '100G', '3T'];
  const optionSets = [
    '',
    'cluster_size=512',
    'cluster_size=4k,refcount_bits=1',
    'cluster_size=2M,refcount_bits=64',
    'extended_l2=on',
    'extended_l2=on,cluster_size=2M',
    'preallocation=full',
    'preallocation=metadata,refcount_bits=8',
    'compat=0.10',
    'compat=0.10,refcount_bits=8',
    'cluster_size=1000',
    'extended_l2=on,cluster_size=4k',
    'refcount_bits=3',
    'compat=9',
  ];
  for (const size of sizes) {
    for (const o of optionSets) {
      const expected = qemuMeasure(['-O', 'qcow2', '--size', size, ...(o ? ['-o', o] : [])]);
      let got: unknown;
      try {
        const bag = OptionBag.parse(o);
        const bytes = size === '1G' ? 2 ** 30 : size === '100G' ? 100 * 2 ** 30 : size === '3T' ? 3 * 2 ** 40 : Number(size);
        got = await measure('qcow2', bag, bytes);
      } catch (e) {
        got = (e as Error).message;
      }
      assert.deepEqual(got, expected, `size ${size} -o ${o}`);
    }
  }
});

test('measure refuses an L1 table above 32 MiB like qemu-img', { skip: !haveQemu }, async () => {
  const expected = qemuMeasure(['-O', 'qcow2', '--size', '100T', '-o', 'cluster_size=512']);
  await assert.rejects(measure('qcow2', OptionBag.parse('cluster_size=512'), 100 * 2 ** 40), { message: expected as string });
});

test('raw targets measure the sector-aligned size', async () => {
  assert.deepEqual(await measure('raw', OptionBag.parse(''), 1000), { required: 1024, 'fully-allocated': 1024 });
});
