import { test } from 'node:test';
import assert from 'node:assert/strict';
import { getopt, parseSize, UsageError, type LongOption } from '../../src/cli/options.js';

const longs: LongOption[] = [
  { name: 'output', arg: 'required', key: 'output' },
  { name: 'backing-chain', arg: 'none', key: 'backing-chain' },
  { name: 'format', arg: 'required', key: 'f' },
  { name: 'force-share', arg: 'none', key: 'U' },
];

const flat = (args: string[], spec = ':f:hUqpo:') => {
  const r = getopt(args, spec, longs);
  return { opts: r.options.map((o) => (o.value === undefined ? o.key : `${o.key}=${o.value}`)), operands: r.operands };
};

test('short options: bundled, attached and separate values', () => {
  assert.deepEqual(flat(['-qp', '-fraw', '-o', 'a=b', 'x']), { opts: ['q', 'p', 'f=raw', 'o=a=b'], operands: ['x'] });
  assert.deepEqual(flat(['-Uf', 'qcow2', 'x']), { opts: ['U', 'f=qcow2'], operands: ['x'] });
  assert.deepEqual(flat(['-ocluster_size=4k', 'x']), { opts: ['o=cluster_size=4k'], operands: ['x'] });
});

test('long options: =value, separate value, unique prefixes', () => {
  assert.deepEqual(flat(['--output=json', 'x']), { opts: ['output=json'], operands: ['x'] });
  assert.deepEqual(flat(['--output', 'json', 'x']), { opts: ['output=json'], operands: ['x'] });
  assert.deepEqual(flat(['--out=json', '--backing', 'x']), { opts: ['output=json', 'backing-chain'], operands: ['x'] });
  assert.throws(() => flat(['--fo=raw', 'x']), /ambiguous/);
});

test('operands anywhere (permuting), -- ends options, + stops at the first operand', () => {
  assert.deepEqual(flat(['x', '-f', 'raw', 'y']), { opts: ['f=raw'], operands: ['x', 'y'] });
  assert.deepEqual(flat(['-q', '--', '-f', 'y']), { opts: ['q'], operands: ['-f', 'y'] });
  assert.deepEqual(flat(['-q', 'info', '-f', 'raw'], '+hq'), { opts: ['q'], operands: ['info', '-f', 'raw'] });
});

test('errors use getopt wording', () => {
  assert.throws(() => flat(['-z']), (e: unknown) => e instanceof UsageError && e.message === "unrecognized option '-z'");
  assert.throws(() => flat(['--bogus']), (e: unknown) => e instanceof UsageError && e.message === "unrecognized option '--bogus'");
  assert.throws(() => flat(['-f']), (e: unknown) => e instanceof UsageError && e.message === "missing argument for option '-f'");
  assert.throws(() => flat(['--backing-chain=1']), /doesn't allow an argument/);
});

test('sizes with qemu suffixes', () => {
  assert.equal(parseSize('0'), 0);
  assert.equal(parseSize('512'), 512);
  assert.equal(parseSize('4k'), 4096);
  assert.equal(parseSize('4K'), 4096);
  assert.equal(parseSize('1M'), 1048576);
  assert.equal(parseSize('2G'), 2 * 1024 ** 3);
  assert.equal(parseSize('1T'), 1024 ** 4);
  assert.equal(parseSize('1.5k'), 1536);
  assert.equal(parseSize('10b'), 10);
  assert.equal(parseSize('0x10'), 16);
  assert.equal(parseSize('-1'), undefined);
  assert.equal(parseSize('1x'), undefined);
  assert.equal(parseSize('abc'), undefined);
  assert.equal(parseSize(''), undefined);
});

test('a fraction without a unit is refused only when it is not zero (qemu_strtosz)', () => {
  assert.equal(parseSize('1024.0'), 1024);
  assert.equal(parseSize('1024.0b'), 1024);
  assert.equal(parseSize('1.5'), undefined);
  assert.equal(parseSize('1.5b'), undefined);
  assert.equal(parseSize('1.5M'), 1.5 * 1024 * 1024);
});
