/**
 * Started through a link named qemu-img, qemu-io or qemu-nbd, the CLI speaks
 * as that tool: error prefix, usage, help and --version; as qimg it keeps its
 * own name.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { splitQemuIoArgs } from '../../src/cli/personality.js';
import { qimgMain } from '../helpers/cli.js';
import { tmpDir } from '../helpers/tools.js';

const dir = tmpDir('qimg-personality-');
const main = qimgMain();
chmodSync(main, 0o755);
for (const name of ['qemu-img', 'qemu-io', 'qemu-nbd', 'qimg']) symlinkSync(main, join(dir, name));

function run(name: string, args: string[]) {
  const r = spawnSync(process.execPath, [join(dir, name), ...args], { encoding: 'utf8', cwd: dir });
  return { stdout: r.stdout, stderr: r.stderr, status: r.status };
}

test('qemu-img: version, errors and help name qemu-img', () => {
  const v = run('qemu-img', ['--version']);
  assert.equal(v.status, 0);
  assert.match(v.stdout, /^qemu-img version 7\.2\.\d+ \(qimg [^)]+\)\nCopyright \(c\) 2003-2022 Fabrice Bellard and the QEMU Project developers\n$/);
  const bad = run('qemu-img', ['--bogus']);
  assert.equal(bad.status, 1);
  assert.equal(bad.stderr, "qemu-img: unrecognized option '--bogus'\nTry 'qemu-img --help' for more information\n");
  const missing = run('qemu-img', ['info', join(dir, 'absent.qcow2')]);
  assert.equal(missing.status, 1);
  assert.match(missing.stderr, /^qemu-img: Could not open '.*absent\.qcow2': /);
  const help = run('qemu-img', ['--help']);
  assert.equal(help.status, 0);
  assert.match(help.stdout, /^qemu-img version 7\.2/);
  assert.match(help.stdout, /\nusage: qemu-img \[standard options\] command \[command options\]\nQEMU disk image utility\n/);
  assert.match(help.stdout, /\n {2}amend \[--object objectdef\]/);
  assert.doesNotMatch(help.stdout, /\n {2}io /, 'qemu-io commands are not qemu-img commands');
});

test('qemu-img: io is not one of its commands', () => {
  const r = run('qemu-img', ['io', 'x']);
  assert.equal(r.status, 1);
  assert.equal(r.stderr, "qemu-img: Command not found: io\nTry 'qemu-img --help' for more information\n");
});

test('qemu-io: version, help, its top-level options and error prefix', () => {
  const v = run('qemu-io', ['-V']);
  assert.equal(v.status, 0);
  assert.match(v.stdout, /^qemu-io version 7\.2\.\d+ \(qimg [^)]+\)\n/);
  const help = run('qemu-io', ['--help']);
  assert.equal(help.status, 0);
  assert.match(help.stdout, /^Usage: qemu-io \[OPTIONS\]\.\.\. \[-c STRING\]\.\.\. \[file\]\nQEMU Disk exerciser\n/);
  assert.match(help.stdout, /-i, --aio=MODE/);
  const bad = run('qemu-io', ['--bogus']);
  assert.equal(bad.status, 1);
  assert.equal(bad.stderr, "qemu-io: unrecognized option '--bogus'\n");
  assert.match(bad.stdout, /^Usage: qemu-io /, 'qemu-io prints its usage after a bad option');
  const aio = run('qemu-io', ['--aio', 'bogus', '-c', 'quit', 'x']);
  assert.equal(aio.status, 1);
  assert.equal(aio.stderr, 'qemu-io: Invalid aio option: bogus\n');
});

test('qemu-io: the options the iotests harness passes are accepted', () => {
  const img = join(dir, 'a.raw');
  const create = run('qemu-img', ['create', '-f', 'raw', img, '1M']);
  assert.equal(create.status, 0, create.stderr);
  const r = run('qemu-io', ['--cache', 'writeback', '--aio', 'threads', '-f', 'raw', '-c', 'write -P 7 0 512', '-c', 'read -P 7 0 512', img]);
  assert.equal(r.stderr, '');
  assert.equal(r.status, 0);
  assert.match(r.stdout, /^wrote 512\/512 bytes at offset 0\n.*\nread 512\/512 bytes at offset 0\n/);
  const missing = run('qemu-io', ['-c', 'quit', '-f', 'raw', join(dir, 'absent.raw')]);
  assert.match(missing.stderr, /^qemu-io: can't open device .*absent\.raw: /);
});

test('qemu-nbd: version and help name qemu-nbd', () => {
  const v = run('qemu-nbd', ['--version']);
  assert.equal(v.status, 0);
  assert.match(v.stdout, /^qemu-nbd 7\.2\.\d+ \(qimg [^)]+\)\n/);
  assert.match(run('qemu-nbd', ['--help']).stdout, /^Usage: qemu-nbd \[OPTIONS\] FILE\n/);
  const r = run('qemu-nbd', ['x']);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /^qemu-nbd: /);
});

test('qimg keeps its own name', () => {
  assert.match(run('qimg', ['--version']).stdout, /^qimg version /);
  assert.equal(run('qimg', ['--bogus']).stderr, "qimg: unrecognized option '--bogus'\nTry 'qimg --help' for more information\n");
});

test('splitQemuIoArgs: takes out -h, -V and the AIO mode, never looks into -c strings', () => {
  assert.deepEqual(splitQemuIoArgs(['--cache', 'writeback', '--aio', 'threads', '-f', 'qcow2', '-c', 'read -V 0 1', 'img']), {
    args: ['--cache', 'writeback', '-f', 'qcow2', '-c', 'read -V 0 1', 'img'],
    help: false,
    version: false,
  });
  assert.deepEqual(splitQemuIoArgs(['-inative', '-rU', '-c', '-h', '--aio=io_uring', 'x']).args, ['-rU', '-c', '-h', 'x']);
  assert.equal(splitQemuIoArgs(['-c', '-V', 'x']).version, false);
  assert.equal(splitQemuIoArgs(['-rV', 'x']).version, true);
  assert.equal(splitQemuIoArgs(['-i', 'posix', 'x']).badAio, 'posix');
});
