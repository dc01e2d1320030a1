/**
 * QEMU's image lock bytes: which permissions each open takes (the bytes
 * qemu-img/qemu-io 7.2 lock, seen with strace), how they become lock calls,
 * and the real addon on files opened twice in one process.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CREATE_PERMISSIONS, dataFilePermissions, imagePermissions, type Permissions } from '../../src/block/perms.js';
import '../../src/formats/index.js'; // imagePermissions asks the registered formats
import { FileStorage } from '../../src/io/file.js';
import { FileLocks, lockingAvailable, onLockWarning, setLockCalls, type LockCalls } from '../../src/io/locks.js';
import { tmpDir } from '../helpers/tools.js';

/** The bytes an open locks: 100+bit for each permission held, 200+bit for each one not shared. */
const bytesOf = (p: Permissions): number[] => [
  ...[0, 1, 2, 3].filter((i) => p.perm & (1 << i)).map((i) => 100 + i),
  ...[0, 1, 2, 3].filter((i) => !(p.shared & (1 << i))).map((i) => 200 + i),
];

test('permissions give the bytes qemu-img and qemu-io lock for the same open', () => {
  // qemu-img map / qemu-io -r
  assert.deepEqual(bytesOf(imagePermissions('qcow2', { writable: false })), [100, 201, 203]);
  // qemu-io, qemu-img convert -n target, check -r
  assert.deepEqual(bytesOf(imagePermissions('qcow2', { writable: true })), [100, 101, 103, 201, 203]);
  assert.deepEqual(bytesOf(imagePermissions('qed', { writable: true })), [100, 101, 103, 201, 203]);
  // qemu-img info
  assert.deepEqual(bytesOf(imagePermissions('qcow2', { writable: false, metadataOnly: true })), [201, 203]);
  // -U: info takes nothing, reads keep only their own byte
  assert.deepEqual(bytesOf(imagePermissions('qcow2', { writable: false, metadataOnly: true, forceShare: true })), []);
  assert.deepEqual(bytesOf(imagePermissions('qcow2', { writable: false, forceShare: true })), [100]);
  // raw carries no metadata: it shares everything
  assert.deepEqual(bytesOf(imagePermissions('raw', { writable: true })), [100, 101]);
  assert.deepEqual(bytesOf(imagePermissions('raw', { writable: false })), [100]);
  assert.deepEqual(bytesOf(imagePermissions('raw', { writable: false, metadataOnly: true })), []);
  // external data files
  assert.deepEqual(bytesOf(dataFilePermissions({ writable: true })), [100, 101, 103, 203]);
  assert.deepEqual(bytesOf(dataFilePermissions({ writable: false })), [100, 203]);
  // file-posix create
  assert.deepEqual(bytesOf(CREATE_PERMISSIONS), [101, 103, 203]);
});

/** Fake lock calls: `others` are bytes another process holds. */
function fake(others: number[] = []): LockCalls & { log: string[]; held: Set<number> } {
  const held = new Set<number>();
  const log: string[] = [];
  return {
    log,
    held,
    setLock(_fd, offset, type) {
      log.push(`${type === 0 ? 'unlock' : 'lock'} ${offset}`);
      if (type === 0) held.delete(offset);
      else held.add(offset);
      return 0;
    },
    testLock(_fd, offset) {
      log.push(`test ${offset}`);
      return others.includes(offset) ? 11 : 0;
    },
  };
}

after(() => setLockCalls(undefined));

test('locks first, then checks, in qemu order; a conflict rolls back and names the permission', () => {
  const calls = fake([201]);
  setLockCalls(calls);
  const locks = FileLocks.forFile(3, 'disk.qcow2', imagePermissions('qcow2', { writable: true }))!;
  assert.throws(
    () => locks.set(imagePermissions('qcow2', { writable: true })),
    (e: Error) => e.message === 'Failed to get "write" lock\nIs another process using the image [disk.qcow2]?',
  );
  assert.deepEqual(calls.log.slice(0, 7), ['lock 100', 'lock 101', 'lock 103', 'lock 201', 'lock 203', 'test 200', 'test 201']);
  assert.deepEqual([...calls.held], [], 'nothing stays locked after a refusal');
});

test('a reader is refused by a holder that does not share write, with the "shared" wording', () => {
  setLockCalls(fake([101]));
  const p = imagePermissions('qcow2', { writable: false });
  const locks = FileLocks.forFile(3, 'a.qcow2', p)!;
  assert.throws(
    () => locks.set(p),
    (e: Error) => e.message === 'Failed to get shared "write" lock\nIs another process using the image [a.qcow2]?',
  );
});

test('changing permissions keeps only the new bytes', () => {
  const calls = fake();
  setLockCalls(calls);
  const locks = FileLocks.forFile(3, 'a.qcow2', CREATE_PERMISSIONS)!;
  locks.set(CREATE_PERMISSIONS);
  locks.set(imagePermissions('raw', { writable: true }));
  assert.deepEqual([...calls.held].sort(), [100, 101]);
});

test('without the addon: no locks, and one warning on the first writable open only', () => {
  setLockCalls(null);
  const seen: string[] = [];
  onLockWarning((m) => seen.push(m));
  assert.equal(FileLocks.forFile(3, 'r.qcow2', imagePermissions('qcow2', { writable: false })), null);
  assert.equal(seen.length, 0);
  assert.equal(FileLocks.forFile(3, 'w.qcow2', imagePermissions('qcow2', { writable: true })), null);
  assert.equal(FileLocks.forFile(3, 'x.qcow2', imagePermissions('qcow2', { writable: true })), null);
  assert.equal(seen.length, 1);
  assert.match(seen[0]!, /w\.qcow2/);
  setLockCalls(undefined);
});

test('the addon: two opens of one file in one process see each other, and close releases', async (t) => {
  setLockCalls(undefined);
  if (!lockingAvailable()) {
    if (process.env.CI) throw new Error('the ofdlock addon is required when CI is set (npm install builds it)');
    t.skip('ofdlock addon not built (npm install builds it)');
    return;
  }
  const path = join(tmpDir('qimg-flock-'), 'f.qcow2');
  writeFileSync(path, new Uint8Array(4096));
  const w = await FileStorage.open(path, { writable: true, permissions: imagePermissions('qcow2', { writable: true }) });
  await assert.rejects(FileStorage.open(path, { writable: true, permissions: imagePermissions('qcow2', { writable: true }) }), /Failed to get "write" lock/);
  await assert.rejects(FileStorage.open(path, { permissions: imagePermissions('qcow2', { writable: false }) }), /Failed to get shared "write" lock/);
  // A writable open that names no permissions still respects a holder that refuses writers.
  await assert.rejects(FileStorage.open(path, { writable: true }), /Failed to get "write" lock/);
  const shared = await FileStorage.open(path, { permissions: imagePermissions('qcow2', { writable: false, forceShare: true }) });
  await shared.close();
  // A refused create must not have truncated the file.
  await assert.rejects(FileStorage.open(path, { writable: true, create: true, truncate: true, permissions: CREATE_PERMISSIONS }), /Failed to get "write" lock/);
  assert.equal(await w.size(), 4096);
  await w.close();
  const again = await FileStorage.open(path, { writable: true, permissions: imagePermissions('qcow2', { writable: true }) });
  await again.close();
});
