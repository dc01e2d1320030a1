import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cvtstr, formatG, hashHex, sizeToStr, timestr, toFixedC } from '../../src/cli/format.js';

test('size_to_str as qemu prints it', () => {
  const cases: [number, string][] = [
    [0, '0 B'],
    [1, '1 B'],
    [512, '512 B'],
    [999, '999 B'],
    [1000, '0.977 KiB'],
    [1024, '1 KiB'],
    [1152, '1.12 KiB'], // exact tie rounds to even, as glibc does
    [200704, '196 KiB'],
    [266240, '260 KiB'],
    [1048576, '1 MiB'],
    [1073741824, '1 GiB'],
    [1000 * 1024 ** 3, '0.977 TiB'],
    [1024 ** 4, '1 TiB'],
    [7 * 1024 ** 6, '7 EiB'],
    [196624, '192 KiB'],
  ];
  for (const [v, s] of cases) assert.equal(sizeToStr(v), s, String(v));
});

test('printf %g and %.Nf corner cases', () => {
  assert.equal(formatG(0.0001234, 3), '0.000123');
  assert.equal(formatG(0.00001234, 3), '1.23e-05');
  assert.equal(formatG(999.5, 3), '1e+03');
  assert.equal(formatG(12.5, 3), '12.5');
  assert.equal(toFixedC(15.625, 2), '15.62');
  assert.equal(toFixedC(15.635, 2), (15.635).toFixed(2));
  assert.equal(toFixedC(0.125, 2), '0.12');
  assert.equal(toFixedC(100, 2), '100.00');
});

test('qemu-io cvtstr and timestr', () => {
  assert.equal(cvtstr(0), '0 bytes');
  assert.equal(cvtstr(512), '512 bytes');
  assert.equal(cvtstr(1536), '1.500 KiB');
  assert.equal(cvtstr(65536), '64 KiB');
  assert.equal(cvtstr(1073610752), '1023.875 MiB');
  assert.equal(cvtstr(2 ** 30), '1 GiB');
  assert.equal(cvtstr(12.5), '12.500000 bytes');
  assert.equal(timestr(0.001), '00.00 sec');
  assert.equal(timestr(0.5), '00.50 sec');
  assert.equal(timestr(61.5), '0:01:01.50');
  assert.equal(timestr(0.004, true), '0:00:00.00');
});

test('%#x', () => {
  assert.equal(hashHex(0), '0');
  assert.equal(hashHex(65536), '0x10000');
});
