/**
 * qimg serve: qemu-nbd's server side. Exports one image over NBD until the
 * last client leaves (or, with -t, until SIGTERM/SIGINT), then flushes and
 * closes it.
 */
import { spawn } from 'node:child_process';
import { unlinkSync, writeFileSync, createWriteStream } from 'node:fs';
import {
  dropsFlushes, flushesEachWrite, isImageError, nbdTls, openImageFile, parseCacheMode, parseFormatName, parseOptions, serveNbd,
  type CacheMode, type Image, type ImageFormat, type NbdListen, type OpenFileOptions,
} from '../../node.js';
import { CliError, err, imageOptsTarget, messageOf, out, PROG } from '../common.js';
import { ObjectStore } from '../objects.js';
import { getopt, UsageError } from '../options.js';
import { TlsObjects } from './tls-objects.js';

export const serveHelp = `usage: qimg serve [OPTIONS] FILE

Export a disk image over NBD, as qemu-nbd does (fixed newstyle, structured replies,
block status, multi-conn with -e, TLS with --tls-creds).

Connection properties:
  -p, --port=PORT           port to listen on (default 10809)
  -b, --bind=IFACE          interface to bind to (default 0.0.0.0)
  -k, --socket=PATH         listen on a Unix socket instead
  -e, --shared=NUM          serve up to NUM clients at once (default 1; 0 = unlimited)
  -t, --persistent          do not exit when the last client disconnects
  -x, --export-name=NAME    export name (default empty)
  -D, --description=TEXT    export description
      --handshake-limit=N   seconds a client has to finish the handshake (default 10)
  -v, --verbose             accepted
Exposing part of the image:
  -A, --allocation-depth    offer the qemu:allocation-depth metadata context
  -B, --bitmap=NAME         offer persistent dirty bitmap NAME (qemu:dirty-bitmap:NAME)
General purpose options:
  --object OBJDEF           secret,id=ID,...; tls-creds-x509,id=ID,dir=DIR,endpoint=server
                            [,verify-peer=on|off]; tls-creds-psk,id=ID,dir=DIR,endpoint=server;
                            authz-simple,id=ID,identity=DN_OR_USERNAME
  --tls-creds=ID            require TLS with the credentials object ID
  --tls-authz=ID            accept only the identity of authz-simple object ID
  --fork                    run the server in the background once it listens
  --pid-file=PATH           write the server's process id to PATH
Block device options:
  -f, --format=FORMAT       image format (raw, qcow2, qed, luks); probed when absent
  -r, --read-only           export read-only
  -s, --snapshot            writes go to a temporary overlay, deleted on exit
  -l, --load-snapshot=SNAPSHOT_PARAM
                            export internal snapshot 'snapshot.id=ID,snapshot.name=NAME' or
                            ID_OR_NAME, read-only
  -n, --nocache             same as --cache=none
      --cache=MODE          none, writeback (default), writethrough, directsync, unsafe
      --aio=MODE            accepted (native, io_uring, threads)
      --discard=MODE        ignore (default) or unmap
      --detect-zeroes=MODE  off (default), on or unmap
      --image-opts          FILE is an option string: driver=FMT,file.filename=PATH,...
  -h, --help                display this help and exit
  -V, --version             output version information and exit
`;

const FORKED_ENV = 'QIMG_SERVE_FORKED';

function snapshotParam(text: string): string | { id?: string; name?: string } {
  if (!text.startsWith('snapshot.')) return text;
  const ref: { id?: string; name?: string } = {};
  for (const [key, value] of parseOptions(text).entries) {
    if (key === 'snapshot.id') ref.id = value;
    else if (key === 'snapshot.name') ref.name = value;
    else throw new CliError(`Failed in parsing snapshot param '${text}': Invalid parameter '${key}'`);
  }
  return ref;
}

export async function cmdServe(args: string[], version: () => string): Promise<number> {
  const { options, operands } = getopt(args, 'hVb:p:rsnvk:e:f:tl:x:T:D:AB:', [
    { name: 'help', arg: 'none', key: 'h' },
    { name: 'version', arg: 'none', key: 'V' },
    { name: 'bind', arg: 'required', key: 'b' },
    { name: 'port', arg: 'required', key: 'p' },
    { name: 'socket', arg: 'required', key: 'k' },
    { name: 'read-only', arg: 'none', key: 'r' },
    { name: 'allocation-depth', arg: 'none', key: 'A' },
    { name: 'bitmap', arg: 'required', key: 'B' },
    { name: 'snapshot', arg: 'none', key: 's' },
    { name: 'load-snapshot', arg: 'required', key: 'l' },
    { name: 'nocache', arg: 'none', key: 'n' },
    { name: 'cache', arg: 'required', key: 'cache' },
    { name: 'aio', arg: 'required', key: 'aio' },
    { name: 'discard', arg: 'required', key: 'discard' },
    { name: 'detect-zeroes', arg: 'required', key: 'detect-zeroes' },
    { name: 'shared', arg: 'required', key: 'e' },
    { name: 'format', arg: 'required', key: 'f' },
    { name: 'persistent', arg: 'none', key: 't' },
    { name: 'export-name', arg: 'required', key: 'x' },
    { name: 'description', arg: 'required', key: 'D' },
    { name: 'verbose', arg: 'none', key: 'v' },
    { name: 'object', arg: 'required', key: 'object' },
    { name: 'tls-creds', arg: 'required', key: 'tls-creds' },
    { name: 'tls-authz', arg: 'required', key: 'tls-authz' },
    { name: 'image-opts', arg: 'none', key: 'image-opts' },
    { name: 'trace', arg: 'required', key: 'T' },
    { name: 'fork', arg: 'none', key: 'fork' },
    { name: 'pid-file', arg: 'required', key: 'pid-file' },
    { name: 'handshake-limit', arg: 'required', key: 'handshake-limit' },
  ]);
  let port: number | undefined;
  let bind: string | undefined;
  let socketPath: string | undefined;
  let readOnly = false;
  let snapshot = false;
  let internalSnapshot: string | { id?: string; name?: string } | undefined;
  let cache: CacheMode = 'writeback';
  let discard: 'ignore' | 'unmap' = 'ignore';
  let detectZeroes: 'off' | 'on' | 'unmap' = 'off';
  let shared = 1;
  let format: string | undefined;
  let persistent = false;
  let exportName = '';
  let description: string | undefined;
  let allocationDepth = false;
  const bitmaps: string[] = [];
  let imageOpts = false;
  let tlsCreds: string | undefined;
  let tlsAuthz: string | undefined;
  let fork = false;
  let pidFile: string | undefined;
  let handshakeLimit = 10;
  const objects = new ObjectStore();
  const tlsObjects = new TlsObjects();

  for (const o of options) {
    const v = o.value ?? '';
    switch (o.key) {
      case 'h':
        out(serveHelp);
        return 0;
      case 'V':
        out(`${PROG} serve version ${version()}\n`);
        return 0;
      case 'p': {
        const n = /^\d+$/.test(v) ? Number(v) : NaN;
        if (!(n >= 0 && n <= 65535)) throw new CliError(`Invalid port '${v}'`);
        port = n;
        break;
      }
      case 'b':
        bind = v;
        break;
      case 'k':
        socketPath = v;
        break;
      case 'r':
        readOnly = true;
        break;
      case 'A':
        allocationDepth = true;
        break;
      case 'B':
        bitmaps.push(v);
        break;
      case 's':
        snapshot = true;
        break;
      case 'l':
        internalSnapshot = snapshotParam(v);
        readOnly = true;
        break;
      case 'n':
        cache = 'none';
        break;
      case 'cache': {
        const m = parseCacheMode(v);
        if (m === undefined) throw new CliError(`Invalid cache mode '${v}'`);
        cache = m;
        break;
      }
      case 'aio':
        if (!['native', 'io_uring', 'threads'].includes(v)) throw new CliError(`Invalid aio mode '${v}'`);
        break;
      case 'discard':
        if (v === 'ignore' || v === 'off') discard = 'ignore';
        else if (v === 'unmap' || v === 'on') discard = 'unmap';
        else throw new CliError(`Invalid discard mode \`${v}'`);
        break;
      case 'detect-zeroes':
        if (v !== 'off' && v !== 'on' && v !== 'unmap') throw new CliError(`Invalid detect-zeroes mode '${v}'`);
        detectZeroes = v;
        break;
      case 'e': {
        const n = /^\d+$/.test(v) ? Number(v) : NaN;
        if (!(n >= 0 && n <= 0x7fffffff)) throw new CliError(`Invalid shared device number '${v}'`);
        shared = n;
        break;
      }
      case 'f':
        format = v;
        break;
      case 't':
        persistent = true;
        break;
      case 'x':
        if (Buffer.byteLength(v) > 4096) throw new CliError('export name too long');
        exportName = v;
        break;
      case 'D':
        if (Buffer.byteLength(v) > 4096) throw new CliError('export description too long');
        description = v;
        break;
      case 'v':
        break;
      case 'object':
        if (!tlsObjects.add(v) && objects.add(v)) return 0;
        break;
      case 'tls-creds':
        tlsCreds = v;
        break;
      case 'tls-authz':
        tlsAuthz = v;
        break;
      case 'image-opts':
        imageOpts = true;
        break;
      case 'T':
        break;
      case 'fork':
        fork = true;
        break;
      case 'pid-file':
        pidFile = v;
        break;
      case 'handshake-limit': {
        const n = /^\d+$/.test(v) ? Number(v) : NaN;
        if (!(n >= 0)) throw new CliError(`Invalid handshake limit '${v}'`);
        handshakeLimit = n;
        break;
      }
    }
  }
  if (operands.length !== 1) throw new UsageError('Invalid number of arguments', true);
  if (socketPath !== undefined && (port !== undefined || bind !== undefined)) throw new CliError('-k and -p/-b are mutually exclusive');
  if (tlsAuthz !== undefined && tlsCreds === undefined) throw new CliError('--tls-authz is not permitted without --tls-creds');
  if (bitmaps.length > 0 && snapshot) throw new CliError('Cannot export a bitmap with -s');
  const tls = tlsCreds !== undefined ? tlsObjects.resolve(tlsCreds, tlsAuthz) : undefined;

  if (fork && process.env[FORKED_ENV] !== '1') return forkServer(args);

  const file = operands[0]!;
  const img = await openServed(file, { format, imageOpts, readOnly, snapshot, internalSnapshot, cache, secrets: objects.secrets });
  let handle;
  try {
    const listen: NbdListen = socketPath !== undefined ? { path: socketPath } : { port: port ?? 10809, host: bind ?? '0.0.0.0' };
    handle = await serveNbd(img, {
      listen, exportName, description, readOnly: readOnly || internalSnapshot !== undefined, shared, persistent, bitmaps, allocationDepth,
      discard, detectZeroes, handshakeLimit, flushEachWrite: flushesEachWrite(cache),
      tls: tls ? await nbdTls(tls) : undefined,
    });
  } catch (e) {
    await img.close().catch(() => {});
    throw new CliError(messageOf(e), 1, { cause: e });
  }
  if (pidFile !== undefined) writeFileSync(pidFile, `${process.pid}\n`);
  readyForParent();
  const stop = (): void => void handle.close();
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.on('SIGHUP', stop);
  await handle.closed;
  process.off('SIGTERM', stop);
  process.off('SIGINT', stop);
  process.off('SIGHUP', stop);
  await img.close();
  if (pidFile !== undefined) {
    try {
      unlinkSync(pidFile);
    } catch {
      /* already gone */
    }
  }
  return 0;
}

interface ServedOpen {
  format: string | undefined;
  imageOpts: boolean;
  readOnly: boolean;
  snapshot: boolean;
  internalSnapshot: string | { id?: string; name?: string } | undefined;
  cache: CacheMode;
  secrets: Record<string, Uint8Array>;
}

/** Open the image as qemu-nbd's blk_new_open does, with its message on failure. */
async function openServed(file: string, o: ServedOpen): Promise<Image> {
  const writable = !o.readOnly && o.internalSnapshot === undefined;
  const common: OpenFileOptions = { writable, snapshot: o.snapshot && writable, internalSnapshot: o.internalSnapshot, unsafe: dropsFlushes(o.cache), secrets: o.secrets, onWarning: err };
  try {
    if (o.imageOpts) {
      const t = imageOptsTarget(file);
      return await openImageFile(t.path, { ...common, format: t.format, blockOptions: t.blockOptions, locking: t.locking });
    }
    let format: ImageFormat | undefined;
    if (o.format !== undefined) {
      format = parseFormatName(o.format);
      if (format === undefined) throw new Error(`Unknown driver '${o.format}'`);
    }
    return await openImageFile(file, { ...common, format });
  } catch (e) {
    if (e instanceof CliError) throw e;
    const why = isImageError(e) || e instanceof Error ? messageOf(e) : String(e);
    throw new CliError(`Failed to blk_new_open '${file}': Could not open '${file}': ${why}`, 1, { cause: e });
  }
}

/** In a --fork child: tell the waiting parent the server listens (fd 3), then let go of it. */
function readyForParent(): void {
  if (process.env[FORKED_ENV] !== '1') return;
  // The parent stops reading our stderr once we are up: later messages must not crash us.
  process.stderr.on('error', () => {});
  try {
    const s = createWriteStream('', { fd: 3 });
    s.end('ok\n');
  } catch {
    /* no parent pipe */
  }
}

/**
 * --fork: run the same command in a detached child and exit once it
 * listens (its exit status if it fails first), as qemu-nbd's daemonising does.
 */
function forkServer(args: string[]): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [...process.execArgv, process.argv[1]!, 'serve', ...args.filter((a) => a !== '--fork')], {
      detached: true,
      stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
      env: { ...process.env, [FORKED_ENV]: '1' },
    });
    let ready = false;
    child.stderr!.on('data', (d: Buffer) => err(d.toString()));
    const pipe = child.stdio[3] as NodeJS.ReadableStream;
    pipe.on('data', () => {
      if (ready) return;
      ready = true;
      child.stderr!.destroy();
      pipe.removeAllListeners('data');
      (pipe as unknown as { destroy(): void }).destroy();
      child.unref();
      resolve(0);
    });
    child.on('exit', (code) => {
      if (!ready) resolve(code ?? 1);
    });
  });
}
