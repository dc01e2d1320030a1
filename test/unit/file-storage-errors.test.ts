/**
 * FileStorage turns every host failure into ImageError('io') carrying the
 * errno and qemu's strerror text, on the small-request path (synchronous
 * pread/pwrite) and the large one (thread pool) alike. /dev/full fails
 * every write with ENOSPC, as a full disk does.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { isImageError } from '../../src/errors.js';
import { FileStorage } from '../../src/io/file.js';
import { strerror } from '../../src/errno.js';

async function rejectsIo(p: Promise<unknown>, errno: string, text: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(isImageError(e, 'io'), `not an io ImageError: ${String(e)}`);
    assert.equal(e.errno, errno);
    assert.equal(e.message, text);
    assert.equal(strerror(e), text);
    return true;
  });
}

const haveDevFull = existsSync('/dev/full');
if (!haveDevFull && process.env.CI) throw new Error('/dev/full is required when CI is set');

test('writes to a full device reject with ENOSPC: small and large requests', { skip: haveDevFull ? false : 'no /dev/full here' }, async () => {
  const st = await FileStorage.open('/dev/full', { writable: true });
  try {
    await rejectsIo(st.write(new Uint8Array(512).fill(1), 0), 'ENOSPC', 'No space left on device');
    await rejectsIo(st.write(new Uint8Array(1 << 20).fill(1), 4096), 'ENOSPC', 'No space left on device');
    // A character device cannot be truncated or synced: EINVAL, as strerror words it.
    await rejectsIo(st.truncate(4096), 'EINVAL', 'Invalid argument');
    await rejectsIo(st.flush(), 'EINVAL', 'Invalid argument');
    // Once a sync failed, later ones fail too (the kernel may have dropped the pages), as in qemu.
    await rejectsIo(st.flush(), 'EINVAL', 'Invalid argument');
  } finally {
    await st.close();
  }
  await rejectsIo(st.size(), 'EBADF', 'Bad file descriptor');
});

test('no sync without writes since the last one (qemu skips it too)', { skip: haveDevFull ? false : 'no /dev/full here' }, async () => {
  const st = await FileStorage.open('/dev/full', { writable: true });
  await st.flush();
  await st.close();
});

test('cache=unsafe skips the sync, so there is nothing to fail', { skip: haveDevFull ? false : 'no /dev/full here' }, async () => {
  const st = await FileStorage.open('/dev/full', { writable: true, unsafe: true });
  await st.write(new Uint8Array(512), 0).catch(() => {});
  await st.flush();
  await st.close();
});

test('reads of a directory reject with EISDIR: small and large requests', async () => {
  const st = await FileStorage.open(tmpdir());
  try {
    await rejectsIo(st.read(new Uint8Array(512), 0), 'EISDIR', 'Is a directory');
    await rejectsIo(st.read(new Uint8Array(1 << 20), 0), 'EISDIR', 'Is a directory');
  } finally {
    await st.close();
  }
});

test('a failed open keeps its errno and qemu-img\'s wording', async () => {
  await assert.rejects(FileStorage.open('/nonexistent/dir/x.qcow2'), (e: unknown) => {
    assert.ok(isImageError(e, 'not-found'));
    assert.equal(e.errno, 'ENOENT');
    assert.equal(e.message, "Could not open '/nonexistent/dir/x.qcow2': No such file or directory");
    return true;
  });
});
