/** qemu's path_combine for backing names: which colons are protocol prefixes, and text joining. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { hasProtocolPrefix, resolveImplicitPath } from '../../src/node/host.js';

test('a colon is a protocol prefix only before any slash', () => {
  assert.equal(hasProtocolPrefix('nbd:localhost:10809'), true);
  assert.equal(hasProtocolPrefix('file:a'), true);
  assert.equal(hasProtocolPrefix('./image:base.qcow2'), false);
  assert.equal(hasProtocolPrefix('dir/a:b'), false);
  assert.equal(hasProtocolPrefix('plain.qcow2'), false);
});

test('relative backing names join the image directory as text', () => {
  assert.equal(resolveImplicitPath('/d/image:top.qcow2', './image:base.qcow2'), '/d/./image:base.qcow2');
  assert.equal(resolveImplicitPath('/d/top.qcow2', 'base.qcow2'), '/d/base.qcow2');
  assert.equal(resolveImplicitPath('top.qcow2', 'base.qcow2'), 'base.qcow2');
  assert.equal(resolveImplicitPath('./top.qcow2', 'base.qcow2'), './base.qcow2');
  assert.equal(resolveImplicitPath('/d/top.qcow2', '/abs/base.qcow2'), '/abs/base.qcow2');
  assert.equal(resolveImplicitPath('/d/top.qcow2', 'nbd:host:1'), 'nbd:host:1');
});
