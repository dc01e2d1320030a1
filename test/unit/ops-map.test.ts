import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mapImage, type MapEntry } from '../../src/ops/map.js';
import { segImage, bytesImage } from '../helpers/tools.js';

const K = 1024;
const all = async (it: AsyncGenerator<MapEntry>): Promise<MapEntry[]> => {
  const r: MapEntry[] = [];
  for await (const e of it) r.push({ ...e });
  return r;
};
const strip = (es: MapEntry[]) => es.map(({ start, length, depth, present, zero, data, offset }) => ({ start, length, depth, present, zero, data, offset }));

test('contiguous host runs merge, discontiguous ones do not, chains report depth', async () => {
  const base = bytesImage(new Uint8Array(256 * K), 'base');
  const top = segImage(
    [
      { kind: 'data', length: 64 * K, host: 0 },
      { kind: 'data', length: 64 * K, host: 64 * K }, // contiguous: merges
      { kind: 'data', length: 64 * K, host: 512 * K }, // jump: new entry
      { kind: 'unallocated', length: 64 * K }, // backing data
    ],
    new Uint8Array(1024 * K),
    { name: 'top', backing: base },
  );
  const es = strip(await all(mapImage(top)));
  assert.deepEqual(es, [
    { start: 0, length: 128 * K, depth: 0, present: true, zero: false, data: true, offset: 0 },
    { start: 128 * K, length: 64 * K, depth: 0, present: true, zero: false, data: true, offset: 512 * K },
    { start: 192 * K, length: 64 * K, depth: 1, present: true, zero: false, data: true, offset: 192 * K },
  ]);
});

test('unallocated without backing is zero at depth 0; zero clusters are present', async () => {
  const img = segImage(
    [
      { kind: 'unallocated', length: 64 * K },
      { kind: 'unallocated', length: 64 * K },
      { kind: 'zero', length: 64 * K },
      { kind: 'compressed', length: 64 * K },
      { kind: 'compressed', length: 64 * K },
    ],
    new Uint8Array(0),
  );
  const es = strip(await all(mapImage(img)));
  assert.deepEqual(es, [
    { start: 0, length: 128 * K, depth: 0, present: false, zero: true, data: false, offset: undefined },
    { start: 128 * K, length: 64 * K, depth: 0, present: true, zero: true, data: false, offset: undefined },
    { start: 192 * K, length: 128 * K, depth: 0, present: true, zero: false, data: true, offset: undefined },
  ]);
});

test('start offset and max length clip; an empty range gives one zero-length entry', async () => {
  const img = bytesImage(new Uint8Array(64 * K));
  assert.deepEqual(strip(await all(mapImage(img, { start: 1000, maxLength: 3000 }))), [
    { start: 1000, length: 3000, depth: 0, present: true, zero: false, data: true, offset: 1000 },
  ]);
  assert.deepEqual(strip(await all(mapImage(img, { start: 128 * K }))), [
    { start: 128 * K, length: 0, depth: 0, present: false, zero: false, data: false, offset: undefined },
  ]);
});

test('human mode folds unallocated into zero after the first printed entry', async () => {
  const img = segImage(
    [
      { kind: 'data', length: 4 * K, host: 0 },
      { kind: 'zero', length: 4 * K },
      { kind: 'unallocated', length: 4 * K },
    ],
    new Uint8Array(64 * K),
  );
  const json = await all(mapImage(img));
  const human = await all(mapImage(img, { human: true }));
  assert.equal(json.length, 3);
  // the zero entry is rewritten as zero/no-data and its neighbour differs only in "present"
  assert.equal(human.length, 3);
  assert.deepEqual(human.map((e) => [e.data, e.zero]), [
    [true, false],
    [false, true],
    [false, true],
  ]);
});
