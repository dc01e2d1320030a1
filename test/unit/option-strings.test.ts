/**
 * qemu's option strings, one parser for -o lists, --image-opts, -T and
 * --object (QemuOpts and keyval), and the --image-opts open target built
 * on it. Expected values follow qemu-img 7.2's behaviour for the same text.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseOpenTarget, parseOptionList, parseOptions } from '../../src/index.js';

test('-o lists: doubled commas are literal, a lone trailing or leading comma is refused', () => {
  assert.deepEqual(parseOptionList('cluster_size=64k,lazy_refcounts'), [['cluster_size', '64k'], ['lazy_refcounts', 'on']]);
  assert.deepEqual(parseOptionList('backing_file=a,,b,backing_fmt=raw'), [['backing_file', 'a,b'], ['backing_fmt', 'raw']]);
  // An even run of trailing commas is an escaped comma at the end of the value.
  assert.deepEqual(parseOptionList('backing_file=a,,'), [['backing_file', 'a,']]);
  for (const bad of ['cluster_size=64k,', ',', ',cluster_size=64k', 'cluster_size=64k,,,', '']) {
    assert.throws(() => parseOptionList(bad), { message: `Invalid option list: ${bad}` }, bad);
  }
});

test('QemuOpts with an implied key: the first bare item is its value, later bare keys are on', () => {
  const p = parseOptions('x.qcow2,read-only', { impliedKey: 'file' });
  assert.deepEqual(p.entries, [['file', 'x.qcow2'], ['read-only', 'on']]);
  assert.deepEqual(p.shortForm, ['read-only']);
  // Without strict, a trailing comma simply ends the list.
  assert.deepEqual(parseOptions('driver=qcow2,', {}).entries, [['driver', 'qcow2']]);
  assert.deepEqual(parseOptions('enable=a,,b', { impliedKey: 'enable' }).entries, [['enable', 'a,b']]);
});

test('keyval (--object): implied type, help anywhere, keys need a value', () => {
  const kv = { dialect: 'keyval', impliedKey: 'qom-type' } as const;
  assert.deepEqual(parseOptions('secret,id=s0,data=a,,b', kv).entries, [['qom-type', 'secret'], ['id', 's0'], ['data', 'a,b']]);
  assert.deepEqual(parseOptions('secret,id=s0,data=a,', kv).entries, [['qom-type', 'secret'], ['id', 's0'], ['data', 'a']]);
  assert.equal(parseOptions('secret,help', kv).help, true);
  assert.equal(parseOptions('?', kv).help, true);
  assert.equal(parseOptions('secret,id=s0', kv).help, false);
  // The implied value ends at the first comma: "secret,,id" leaves an empty key.
  assert.throws(() => parseOptions('secret,,id=s0', kv), { message: "Invalid parameter ''" });
  assert.throws(() => parseOptions(',id=s0', kv), { message: "Invalid parameter ''" });
  assert.throws(() => parseOptions('secret,id=s0,data', kv), { message: "Expected '=' after parameter 'data'" });
  assert.throws(() => parseOptions('help,secret', kv), { message: "Expected '=' after parameter 'secret'" });
});

test('--image-opts targets: driver, file, flags and the format options', () => {
  const t = parseOpenTarget('driver=qcow2,file.filename=a,,b.qcow2,file.driver=file,read-only=on,file.locking=off,encrypt.key-secret=s0,backing.encrypt.key-secret=s1');
  assert.equal(t.path, 'a,b.qcow2');
  assert.equal(t.format, 'qcow2');
  assert.equal(t.readOnly, true);
  assert.equal(t.locking, 'off');
  assert.deepEqual(t.blockOptions, { 'encrypt.key-secret': 's0', 'backing.encrypt.key-secret': 's1' });
  assert.equal(parseOpenTarget('file.filename=x').format, undefined);
});

test('--image-opts targets: qemu-img refusals, in its words', () => {
  const cases: [string, string][] = [
    ['x.qcow2', "Cannot find device='x.qcow2' nor node-name='x.qcow2'"],
    ['help', "Cannot find device='help' nor node-name='help'"],
    [',driver=qcow2,file.filename=x', 'Cannot reference an existing block device with additional options or a new filename'],
    ['driver=qcow2', 'A block device must be specified for "file"'],
    ['driver=foo,file.filename=x', "Unknown driver 'foo'"],
    ['driver=qcow2,,file.filename=x', "Unknown driver 'qcow2,file.filename=x'"],
    ['driver=qcow2,file.filename=x,read-only=maybe', "Parameter 'read-only' expects 'on' or 'off'"],
    ['driver=qcow2,file.filename=x,file.locking=bad', 'invalid parameter value: bad'],
    ['driver=qcow2,file.filename=x,file.foo=1', "Block protocol 'file' doesn't support the option 'foo'"],
  ];
  for (const [text, message] of cases) assert.throws(() => parseOpenTarget(text), { message }, text);
  // A protocol other than file: refused, never opened as a file.
  assert.throws(() => parseOpenTarget('driver=raw,file.driver=nbd,file.filename=x'), /Unknown protocol driver 'nbd'/);
});
