/**
 * qimg serve with TLS as qemu-nbd runs it: x509 credentials made here with
 * certtool (client certificates required by verify-peer), PSK keys, an
 * authz-simple identity, and clients that skip TLS refused.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { qemuImg, tmpDir } from '../helpers/tools.js';
import { qimgCommand } from '../helpers/cli.js';
import { requireNbdTools, runAsync, startQemuNbd, unixUri } from '../helpers/nbd.js';

const TOOLS = ['certtool', 'nbdinfo', 'qemu-img', 'qemu-io', 'qemu-nbd'];

/** A CA, a server certificate for localhost and a client certificate (C=GB,O=Test,CN=client1). */
function makeCerts(dir: string): { server: string; client: string; bare: string } {
  const gen = (args: string[]): void => void execFileSync('certtool', args, { stdio: ['ignore', 'ignore', 'ignore'] });
  const key = (path: string): void => writeFileSync(path, execFileSync('certtool', ['--generate-privkey'], { stdio: ['ignore', 'pipe', 'ignore'] }));
  const server = join(dir, 'server');
  const client = join(dir, 'client');
  const bare = join(dir, 'bare');
  for (const d of [server, client, bare]) mkdirSync(d);
  key(join(dir, 'ca-key.pem'));
  writeFileSync(join(dir, 'ca.info'), 'cn = Test CA\nca\ncert_signing_key\nexpiration_days = 2\n');
  gen(['--generate-self-signed', '--load-privkey', join(dir, 'ca-key.pem'), '--template', join(dir, 'ca.info'), '--outfile', join(dir, 'ca-cert.pem')]);
  const signed = (keyPath: string, info: string, out: string): void => {
    writeFileSync(join(dir, 'x.info'), info);
    key(keyPath);
    gen(['--generate-certificate', '--load-ca-certificate', join(dir, 'ca-cert.pem'), '--load-ca-privkey', join(dir, 'ca-key.pem'), '--load-privkey', keyPath, '--template', join(dir, 'x.info'), '--outfile', out]);
  };
  signed(join(server, 'server-key.pem'), 'organization = Test\ncn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 2\n', join(server, 'server-cert.pem'));
  signed(join(client, 'client-key.pem'), 'country = GB\norganization = Test\ncn = client1\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 2\n', join(client, 'client-cert.pem'));
  for (const d of [server, client, bare]) copyFileSync(join(dir, 'ca-cert.pem'), join(d, 'ca-cert.pem'));
  return { server, client, bare };
}

/** `qimg serve --fork -t` with `args`; returns a stop function. */
async function serve(dir: string, args: string[]): Promise<() => Promise<void>> {
  const pidFile = join(dir, `serve-${Math.random().toString(36).slice(2)}.pid`);
  const r = await runAsync(...qimgCommand(['serve', '--fork', '-t', '--pid-file', pidFile, ...args]));
  assert.equal(r.status, 0, r.stderr);
  const pid = Number(readFileSync(pidFile, 'utf8'));
  return async () => {
    process.kill(pid, 'SIGTERM');
    for (let i = 0; i < 200; i++) {
      try {
        process.kill(pid, 0);
      } catch {
        return;
      }
      await sleep(50);
    }
  };
}

test('x509 with verify-peer: clients with a certificate read and write; one without TLS or without a certificate is refused', async (t) => {
  if (!requireNbdTools(t, TOOLS)) return;
  const dir = tmpDir();
  const certs = makeCerts(dir);
  const img = join(dir, 'x.qcow2');
  qemuImg(['create', '-q', '-f', 'qcow2', img, '4M']);
  const sock = join(dir, 'x.sock');
  const stop = await serve(dir, ['--object', `tls-creds-x509,id=tls0,dir=${certs.server},endpoint=server,verify-peer=on`, '--tls-creds', 'tls0', '-e', '0', '-k', sock, img]);
  try {
    const tlsUri = `nbds+unix:///?socket=${sock}&tls-certificates=${certs.client}`;
    const info = await runAsync('nbdinfo', [tlsUri]);
    assert.equal(info.status, 0, info.stderr);
    assert.match(info.stdout, /newstyle-fixed with TLS, using structured packets/);
    const obj = `tls-creds-x509,id=c0,dir=${certs.client},endpoint=client`;
    const opts = `driver=nbd,server.type=unix,server.path=${sock},tls-creds=c0,tls-hostname=localhost`;
    const io = await runAsync('qemu-io', ['--object', obj, '--image-opts', '-c', 'write -P 0x4d 0 64k', '-c', 'read -P 0x4d 0 64k', opts]);
    assert.equal(io.status, 0, io.stderr);
    assert.doesNotMatch(io.stdout, /failed/);
    const qi = await runAsync('qemu-img', ['info', '--output=json', '--object', obj, '--image-opts', opts]);
    assert.equal(JSON.parse(qi.stdout)['virtual-size'], 4 * 1024 * 1024);

    // Without TLS: every option but STARTTLS gets NBD_REP_ERR_TLS_REQD, so GO fails (as against qemu-nbd).
    const plain = await runAsync('nbdinfo', [unixUri(sock)]);
    assert.notEqual(plain.status, 0);
    assert.match(plain.stdout + plain.stderr, /without TLS|Operation not supported/);
    const noCert = await runAsync('nbdinfo', [`nbds+unix:///?socket=${sock}&tls-certificates=${certs.bare}`]);
    assert.notEqual(noCert.status, 0);
  } finally {
    await stop();
  }
  assert.equal(qemuImg(['check', img]).status, 0);
});

test('PSK: a client with the key connects; a wrong key is refused', async (t) => {
  if (!requireNbdTools(t, TOOLS)) return;
  const dir = tmpDir();
  const pskDir = join(dir, 'psk');
  mkdirSync(pskDir);
  writeFileSync(join(pskDir, 'keys.psk'), `alice:${randomBytes(32).toString('hex')}\n`);
  const wrong = join(dir, 'wrong.psk');
  writeFileSync(wrong, `alice:${randomBytes(32).toString('hex')}\n`);
  const img = join(dir, 'p.qcow2');
  qemuImg(['create', '-q', '-f', 'qcow2', img, '2M']);
  const sock = join(dir, 'p.sock');
  const stop = await serve(dir, ['--object', `tls-creds-psk,id=tls0,dir=${pskDir},endpoint=server`, '--tls-creds', 'tls0', '-k', sock, img]);
  try {
    const ok = await runAsync('nbdinfo', [`nbds+unix://alice@/?socket=${sock}&tls-psk-file=${join(pskDir, 'keys.psk')}`]);
    assert.equal(ok.status, 0, ok.stderr);
    assert.match(ok.stdout, /with TLS/);
    const io = await runAsync('qemu-io', ['--object', `tls-creds-psk,id=c0,dir=${pskDir},endpoint=client,username=alice`, '--image-opts', '-c', 'write -P 7 0 4k', '-c', 'read -P 7 0 4k', `driver=nbd,server.type=unix,server.path=${sock},tls-creds=c0`]);
    assert.equal(io.status, 0, io.stderr);
    assert.doesNotMatch(io.stdout, /failed/);
    const bad = await runAsync('nbdinfo', [`nbds+unix://alice@/?socket=${sock}&tls-psk-file=${wrong}`]);
    assert.notEqual(bad.status, 0);
  } finally {
    await stop();
  }
});

test('--tls-authz accepts the identity qemu-nbd accepts and refuses another', async (t) => {
  if (!requireNbdTools(t, TOOLS)) return;
  const dir = tmpDir();
  const certs = makeCerts(dir);
  const img = join(dir, 'a.qcow2');
  qemuImg(['create', '-q', '-f', 'qcow2', img, '1M']);
  const uri = (sock: string): string => `nbds+unix:///?socket=${sock}&tls-certificates=${certs.client}`;
  const results: Record<string, boolean[]> = {};
  for (const identity of ['C=GB,O=Test,CN=client1', 'CN=someone-else']) {
    const args = ['--object', `tls-creds-x509,id=tls0,dir=${certs.server},endpoint=server,verify-peer=on`, '--object', `authz-simple,id=auth0,identity=${identity.replaceAll(',', ',,')}`, '--tls-creds', 'tls0', '--tls-authz', 'auth0', '-r'];
    const qsock = join(dir, `q${identity.length}.sock`);
    const q = await startQemuNbd([...args, '-t', img], qsock);
    const theirs = (await runAsync('nbdinfo', [uri(qsock)])).status === 0;
    await q.stop();
    const sock = join(dir, `s${identity.length}.sock`);
    const stop = await serve(dir, [...args, '-k', sock, img]);
    const ours = (await runAsync('nbdinfo', [uri(sock)])).status === 0;
    await stop();
    results[identity] = [ours, theirs];
  }
  assert.deepEqual(results, { 'C=GB,O=Test,CN=client1': [true, true], 'CN=someone-else': [false, false] });
});
