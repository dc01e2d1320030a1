import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RecordingStorage } from '../helpers/recording-storage.js';

test('crash images replay prefixes and drop only unflushed writes', async () => {
  const s = new RecordingStorage(new Uint8Array(8));
  await s.write(Uint8Array.of(1), 0); // op 0
  await s.flush(); // op 1
  await s.write(Uint8Array.of(2), 1); // op 2
  await s.write(Uint8Array.of(3), 2); // op 3
  assert.deepEqual([...s.crashImage(0)], [0, 0, 0, 0, 0, 0, 0, 0]);
  assert.deepEqual([...s.crashImage(4)].slice(0, 3), [1, 2, 3]);
  assert.deepEqual(s.unflushedWrites(4), [2, 3]);
  // Dropping op 0 has no effect: it was flushed.
  assert.deepEqual([...s.crashImage(4, new Set([0, 2]))].slice(0, 3), [1, 0, 3]);
  assert.deepEqual([...s.bytes()].slice(0, 3), [1, 2, 3]);
});
