import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Mutex, RangeLock } from '../../src/block/locks.js';

const tick = () => new Promise<void>((r) => setImmediate(r));

test('Mutex runs callers one at a time, in arrival order', async () => {
  const m = new Mutex();
  const log: string[] = [];
  const job = (name: string) =>
    m.run(async () => {
      log.push(`${name}+`);
      await tick();
      log.push(`${name}-`);
    });
  await Promise.all([job('a'), job('b'), job('c')]);
  assert.deepEqual(log, ['a+', 'a-', 'b+', 'b-', 'c+', 'c-']);
});

test('Mutex releases after a failure', async () => {
  const m = new Mutex();
  await assert.rejects(m.run(async () => { throw new Error('boom'); }), /boom/);
  assert.equal(await m.run(async () => 7), 7);
});

test('RangeLock serialises overlapping ranges and lets disjoint ones interleave', async () => {
  const l = new RangeLock();
  const log: string[] = [];
  const job = (name: string, s: number, e: number) =>
    l.run(s, e, async () => {
      log.push(`${name}+`);
      await tick();
      await tick();
      log.push(`${name}-`);
    });
  await Promise.all([job('a', 0, 10), job('b', 5, 15), job('c', 20, 30)]);
  // c does not wait for a; b waits for a.
  assert.ok(log.indexOf('c+') < log.indexOf('a-'), log.join(' '));
  assert.ok(log.indexOf('b+') > log.indexOf('a-'), log.join(' '));
});
