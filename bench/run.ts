/**
 * npm run bench: qimg and qemu-img side by side on the same files, in one
 * run, alternating, several rounds. Reports median wall time, the median of
 * the per-round ratios qimg/qemu-img, and peak RSS of each, and writes the
 * table to docs/benchmarks.md with the machine it ran on.
 *
 * Options (environment): BENCH_ROUNDS (default 3), BENCH_SIZE_MIB (default
 * 1024), BENCH_DIR (default a temp dir), BENCH_ONLY (comma-separated case names).
 */
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readFileSync, openSync, writeSync, closeSync, ftruncateSync, existsSync } from 'node:fs';
import { cpus, totalmem, tmpdir, release } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomFillSync } from 'node:crypto';
import { qimgMain } from '../test/helpers/cli.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
/** The CLI compiled from the current sources (built here first if dist/ is stale). */
const qimgBin = qimgMain();
const rounds = Number(process.env.BENCH_ROUNDS ?? 3);
const sizeMiB = Number(process.env.BENCH_SIZE_MIB ?? 1024);
const only = process.env.BENCH_ONLY?.split(',');
const dir = process.env.BENCH_DIR ?? mkdtempSync(join(tmpdir(), 'qimg-bench-'));
const BENCH_REQUESTS = Number(process.env.BENCH_REQUESTS ?? 100000);

interface Run {
  ms: number;
  peakKiB: number;
  code: number;
  stderr: string;
  stdout: string;
}

/**
 * Run a command, polling /proc for its peak RSS (VmHWM), so no extra tool is needed.
 * With `sink`, stdout is a pipe into `cat > sink`.
 */
function timed(cmd: string, args: string[], sink?: string): Promise<Run> {
  return new Promise((resolve, reject) => {
    const start = process.hrtime.bigint();
    // The sink is a real `cat`, reading the pipe the command writes into.
    const sinkFd = sink ? openSync(sink, 'w') : undefined;
    const cat = sinkFd !== undefined ? spawn('cat', [], { stdio: ['pipe', sinkFd, 'ignore'] }) : undefined;
    if (sinkFd !== undefined) closeSync(sinkFd);
    const child = spawn(cmd, args, { stdio: ['ignore', cat ? cat.stdin! : 'pipe', 'pipe'] });
    // Our end of cat's input closes, so cat sees the end when the command exits.
    cat?.stdin?.destroy();
    const sinkDone = cat ? new Promise((r) => cat.on('exit', r)) : Promise.resolve();
    let stderr = '';
    let stdout = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
    let peakKiB = 0;
    const poll = setInterval(() => {
      try {
        const m = /VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
        if (m) peakKiB = Math.max(peakKiB, Number(m[1]));
      } catch {
        /* exited between polls */
      }
    }, 5);
    child.on('error', reject);
    child.on('exit', async (code) => {
      clearInterval(poll);
      await sinkDone.catch(() => {});
      let ms = Number(process.hrtime.bigint() - start) / 1e6;
      // bench reports its own run time (no process start-up): use it, as qemu-img bench users do.
      const m = /Run completed in ([\d.]+) seconds/.exec(stdout);
      if (m) ms = Number(m[1]) * 1000;
      resolve({ ms, peakKiB, code: code ?? -1, stderr, stdout });
    });
  });
}

/** The source: random data, text and holes in 1 MiB blocks, in a fixed pattern. */
function makeSource(path: string, bytes: number): void {
  const fd = openSync(path, 'w');
  ftruncateSync(fd, bytes);
  const block = Buffer.alloc(1 << 20);
  const text = Buffer.from('The quick brown fox jumps over the lazy dog. 0123456789\n'.repeat(20000));
  for (let i = 0; i < bytes >> 20; i++) {
    const kind = i % 4;
    if (kind === 3) continue; // hole
    if (kind === 0) randomFillSync(block);
    else text.copy(block, 0, (i * 977) % 4096, ((i * 977) % 4096) + block.length);
    if (kind === 2) block.fill(0, 512 << 10); // half zeros
    writeSync(fd, block, 0, block.length, i * block.length);
  }
  closeSync(fd);
}

const q = (...args: string[]) => execFileSync('qemu-img', args, { stdio: 'ignore' });

interface Case {
  name: string;
  goal: string;
  qemu: { cmd: string; args: string[] };
  qimg: { cmd: string; args: string[]; sink?: string };
  /** Run before each timed command (e.g. a fresh image for allocating writes). */
  before?: () => void;
  /** Requests per run: the table then shows IOPS and the ratio qimg/qemu-img of IOPS. */
  requests?: number;
  /** At least this many rounds for the row, whatever BENCH_ROUNDS says. */
  minRounds?: number;
  /** Which prepared files the row needs. */
  needs?: 'encrypted';
}

const SECRET = ['--object', 'secret,id=s0,data=bench-passphrase'];
/** PBKDF2 work of the volume the open rows unlock: qemu-img's calibration to this many ms on this host. */
const OPEN_ITER_TIME_MS = 1000;
const ENCRYPTED_MIB = 256;

/** Encrypted rows: PBKDF2 on open (map unlocks; info never does), and encrypted data both ways (synced, at least five rounds each). */
function encryptedCases(): Case[] {
  const img = (name: string) => join(dir, name);
  const opts = (file: string) => `driver=qcow2,file.filename=${file},encrypt.key-secret=s0`;
  const both = (args: (who: 'a' | 'b') => string[]): Pick<Case, 'qemu' | 'qimg'> => ({
    qemu: { cmd: 'qemu-img', args: args('a') },
    qimg: { cmd: process.execPath, args: [qimgBin, ...args('b')] },
  });
  const sync = () => execFileSync('sync');
  const freshOut = () => {
    for (const f of ['enc-out-a.qcow2', 'enc-out-b.qcow2', 'dec-out-a.raw', 'dec-out-b.raw']) rmSync(img(f), { force: true });
    sync();
  };
  return [
    {
      name: `open (unlock) a LUKS qcow2: map of an empty one (iter-time ${OPEN_ITER_TIME_MS} ms)`,
      goal: '<= 1.2',
      needs: 'encrypted',
      minRounds: 5,
      before: sync,
      ...both(() => ['map', '--output=json', ...SECRET, '--image-opts', opts(img('enc-open.qcow2'))]),
    },
    {
      name: `LUKS qcow2 ${ENCRYPTED_MIB} MiB -> raw (decrypt)`,
      goal: '<= 1.0',
      needs: 'encrypted',
      minRounds: 5,
      before: freshOut,
      ...both((w) => ['convert', ...SECRET, '--image-opts', opts(img('enc-src.qcow2')), '-O', 'raw', img(`dec-out-${w}.raw`)]),
    },
    {
      name: `raw ${ENCRYPTED_MIB} MiB -> LUKS qcow2 (encrypt, iter-time 100 ms)`,
      goal: '<= 1.5',
      needs: 'encrypted',
      minRounds: 5,
      before: freshOut,
      ...both((w) => ['convert', ...SECRET, '-f', 'raw', '-O', 'qcow2', '-o', 'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=100', img('enc-src.raw'), img(`enc-out-${w}.qcow2`)]),
    },
  ];
}

/** The encrypted rows' files: a volume to unlock, a 256 MiB source both plain and in LUKS qcow2. */
function prepareEncrypted(): void {
  const src = join(dir, 'enc-src.raw');
  if (!existsSync(src)) makeSource(src, ENCRYPTED_MIB << 20);
  const luks = (iterTime: number) => `encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=${iterTime}`;
  execFileSync('qemu-img', ['create', '-q', ...SECRET, '-f', 'qcow2', '-o', luks(OPEN_ITER_TIME_MS), join(dir, 'enc-open.qcow2'), '16M'], { stdio: 'ignore' });
  execFileSync('qemu-img', ['convert', ...SECRET, '-f', 'raw', '-O', 'qcow2', '-o', luks(10), src, join(dir, 'enc-src.qcow2')], { stdio: 'ignore' });
}

function cases(): Case[] {
  const src = join(dir, 'src.raw');
  const srcQ = join(dir, 'src.qcow2');
  const out = (t: string) => join(dir, `out-${t}`);
  const conv = (extra: string[], input: string, o: string): Case['qemu'] => ({ cmd: 'qemu-img', args: ['convert', ...extra, input, o] });
  const qconv = (extra: string[], input: string, o: string): Case['qimg'] => ({ cmd: process.execPath, args: [qimgBin, 'convert', ...extra, input, o] });
  const chain = join(dir, 'chain-top.qcow2');
  const sparse = join(dir, 'sparse4t.qcow2');
  const list: Case[] = [
    { name: 'raw -> qcow2', goal: '<= 1.0', qemu: conv(['-f', 'raw', '-O', 'qcow2'], src, out('a.qcow2')), qimg: qconv(['-f', 'raw', '-O', 'qcow2'], src, out('b.qcow2')) },
    { name: 'qcow2 -> raw', goal: '<= 1.0', qemu: conv(['-f', 'qcow2', '-O', 'raw'], srcQ, out('a.raw')), qimg: qconv(['-f', 'qcow2', '-O', 'raw'], srcQ, out('b.raw')) },
    { name: 'raw -> qcow2 -c zlib', goal: '<= 0.6', qemu: conv(['-c', '-f', 'raw', '-O', 'qcow2'], src, out('az.qcow2')), qimg: qconv(['-c', '-f', 'raw', '-O', 'qcow2'], src, out('bz.qcow2')) },
    { name: 'raw -> qcow2 -c zstd', goal: '<= 1.0', qemu: conv(['-c', '-f', 'raw', '-O', 'qcow2', '-o', 'compression_type=zstd'], src, out('as.qcow2')), qimg: qconv(['-c', '-f', 'raw', '-O', 'qcow2', '-o', 'compression_type=zstd'], src, out('bs.qcow2')) },
    { name: 'chain flatten -> qcow2', goal: '<= 1.0', qemu: conv(['-O', 'qcow2'], chain, out('ac.qcow2')), qimg: qconv(['-O', 'qcow2'], chain, out('bc.qcow2')) },
    { name: '4 TiB sparse qcow2 -> raw', goal: '<= 1.0', qemu: conv(['-O', 'raw'], sparse, out('a4t.raw')), qimg: qconv(['-O', 'raw'], sparse, out('b4t.raw')) },
    { name: '4 GiB sparse qcow2 -> raw (same data)', goal: 'flat in size', qemu: conv(['-O', 'raw'], join(dir, 'sparse4g.qcow2'), out('a4g.raw')), qimg: qconv(['-O', 'raw'], join(dir, 'sparse4g.qcow2'), out('b4g.raw')) },
  ];
  // qemu-img cannot write a qcow2 into a pipe: these rows compare qimg into a pipe
  // (`| cat > out`) with qimg into a file, in the qemu-img column.
  const fresh = () => {
    for (const f of ['sf.qcow2', 'ss.qcow2']) rmSync(out(f), { force: true });
    execFileSync('sync');
  };
  const streamRow = (name: string, extra: string[]): Case => ({
    name: `${name} (qemu-img column: qimg into a file)`,
    goal: '<= 1.2',
    before: fresh,
    qemu: { cmd: process.execPath, args: [qimgBin, 'convert', '-f', 'raw', '-O', 'qcow2', ...extra, src, out('sf.qcow2')] },
    qimg: { cmd: process.execPath, args: [qimgBin, 'convert', '-f', 'raw', '-O', 'qcow2', ...extra, src, '-'], sink: out('ss.qcow2') },
  });
  list.push(
    streamRow('raw -> qcow2 into a pipe', []),
    streamRow('raw -> qcow2 -c zlib into a pipe', ['-c']),
    streamRow('raw -> qcow2 -c zstd into a pipe', ['-c', '-o', 'compression_type=zstd']),
  );
  // qemu-img bench has no random mode: a step of 1 MiB + 4 KiB scatters 4 KiB requests over the image.
  const benchArgs = (write: boolean, file: string) => ['bench', '-f', 'qcow2', '-c', String(BENCH_REQUESTS), '-d', '32', '-s', '4096', '-S', String((1 << 20) + 4096), ...(write ? ['-w'] : []), file];
  const freshAlloc = () => {
    for (const f of ['bench-w-a.qcow2', 'bench-w-b.qcow2']) q('create', '-f', 'qcow2', join(dir, f), `${sizeMiB}M`);
  };
  list.push(
    {
      name: 'bench 4 KiB scattered reads, depth 32 (IOPS)',
      goal: '>= 1.0x',
      requests: BENCH_REQUESTS,
      qemu: { cmd: 'qemu-img', args: benchArgs(false, srcQ) },
      qimg: { cmd: process.execPath, args: [qimgBin, ...benchArgs(false, srcQ)] },
    },
    {
      name: 'bench 4 KiB allocating writes, depth 32 (IOPS)',
      goal: '>= 1.0x',
      requests: BENCH_REQUESTS,
      before: freshAlloc,
      qemu: { cmd: 'qemu-img', args: benchArgs(true, join(dir, 'bench-w-a.qcow2')) },
      qimg: { cmd: process.execPath, args: [qimgBin, ...benchArgs(true, join(dir, 'bench-w-b.qcow2'))] },
    },
  );
  list.push(...encryptedCases());
  return only ? list.filter((c) => only.some((o) => c.name.includes(o))) : list;
}

function prepare(): void {
  const bytes = sizeMiB << 20;
  const src = join(dir, 'src.raw');
  if (!existsSync(src)) makeSource(src, bytes);
  q('convert', '-f', 'raw', '-O', 'qcow2', src, join(dir, 'src.qcow2'));
  // A three-deep chain: base holds the source, two overlays rewrite parts of it.
  q('convert', '-f', 'raw', '-O', 'qcow2', src, join(dir, 'chain-base.qcow2'));
  q('create', '-f', 'qcow2', '-b', 'chain-base.qcow2', '-F', 'qcow2', join(dir, 'chain-mid.qcow2'));
  execFileSync('qemu-io', ['-c', `write -P 0x11 0 ${bytes >> 2}`, join(dir, 'chain-mid.qcow2')], { stdio: 'ignore' });
  q('create', '-f', 'qcow2', '-b', 'chain-mid.qcow2', '-F', 'qcow2', join(dir, 'chain-top.qcow2'));
  execFileSync('qemu-io', ['-c', `write -P 0x22 ${bytes >> 1} ${bytes >> 3}`, join(dir, 'chain-top.qcow2')], { stdio: 'ignore' });
  // 4 TiB virtual, 64 MiB of data spread over the disk.
  const sparse = join(dir, 'sparse4t.qcow2');
  q('create', '-f', 'qcow2', sparse, '4T');
  const cmds: string[] = [];
  for (let i = 0; i < 64; i++) cmds.push('-c', `write -P ${i + 1} ${i * 64 + 1}G 1M`);
  execFileSync('qemu-io', [...cmds, sparse], { stdio: 'ignore' });
  // The same 64 MiB of data in a 4 GiB image: convert time should not depend on the virtual size.
  const small = join(dir, 'sparse4g.qcow2');
  q('create', '-f', 'qcow2', small, '4G');
  const cmds4g: string[] = [];
  for (let i = 0; i < 64; i++) cmds4g.push('-c', `write -P ${i + 1} ${i * 64}M 1M`);
  execFileSync('qemu-io', [...cmds4g, small], { stdio: 'ignore' });
}

/** Milliseconds, or IOPS for bench rows. */
const fmt = (c: Case, ms: number): string => (c.requests ? `${Math.round(c.requests / (ms / 1000))} IOPS` : ms.toFixed(0));

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

/** With BENCH_ONLY, the rows measured now replace theirs in docs/benchmarks.md; the others stay. */
function mergeRows(rows: string[]): string[] {
  const name = (row: string) => row.split(' | ')[0]!.slice(2);
  let old: string[] = [];
  try {
    old = readFileSync(join(root, 'docs', 'benchmarks.md'), 'utf8').split('\n').filter((l) => l.startsWith('| ') && !l.startsWith('| work |'));
  } catch {
    /* no table yet */
  }
  const fresh = new Map(rows.map((r) => [name(r), r]));
  const merged = old.map((r) => fresh.get(name(r)) ?? r);
  for (const r of rows) if (!old.some((o) => name(o) === name(r))) merged.push(r);
  return merged;
}

async function main(): Promise<void> {
  const qemuVersion = execFileSync('qemu-img', ['--version']).toString().split('\n')[0];
  console.log(`bench in ${dir}: ${sizeMiB} MiB source, ${rounds} rounds`);
  const selected = cases();
  if (selected.some((c) => c.needs === undefined)) prepare();
  if (selected.some((c) => c.needs === 'encrypted')) prepareEncrypted();
  const rows: string[] = [];
  for (const c of selected) {
    const qemuRuns: Run[] = [];
    const qimgRuns: Run[] = [];
    const ratios: number[] = [];
    let failure = '';
    for (let r = 0; r < Math.max(rounds, c.minRounds ?? 0) && !failure; r++) {
      // Alternate who goes first, so neither always meets a warm cache.
      const order = r % 2 === 0 ? (['qemu', 'qimg'] as const) : (['qimg', 'qemu'] as const);
      const got: Partial<Record<'qemu' | 'qimg', Run>> = {};
      for (const who of order) {
        const spec = who === 'qemu' ? c.qemu : c.qimg;
        c.before?.();
        let run = await timed(spec.cmd, spec.args, who === 'qimg' ? c.qimg.sink : undefined);
        // qemu-img's PBKDF2 calibration now and then cannot read the CPU time it needs: run again.
        for (let i = 0; i < 3 && run.code !== 0 && /CPU usage/.test(run.stderr); i++) {
          c.before?.();
          run = await timed(spec.cmd, spec.args, who === 'qimg' ? c.qimg.sink : undefined);
        }
        if (run.code !== 0) failure = `${who} failed: ${run.stderr.trim().split('\n')[0]}`;
        got[who] = run;
      }
      if (failure) break;
      qemuRuns.push(got.qemu!);
      qimgRuns.push(got.qimg!);
      // For bench rows the ratio is of IOPS (qimg/qemu-img, higher is better); otherwise of time.
      ratios.push(c.requests ? got.qemu!.ms / got.qimg!.ms : got.qimg!.ms / got.qemu!.ms);
    }
    const row = failure
      ? `| ${c.name} | ${c.goal} | n/a | n/a | n/a | n/a | n/a | ${failure} |`
      : `| ${c.name} | ${c.goal} | ${fmt(c, median(qemuRuns.map((x) => x.ms)))} | ${fmt(c, median(qimgRuns.map((x) => x.ms)))} | ${median(ratios).toFixed(2)} | ${(Math.max(...qemuRuns.map((x) => x.peakKiB)) / 1024).toFixed(1)} | ${(Math.max(...qimgRuns.map((x) => x.peakKiB)) / 1024).toFixed(1)} | |`;
    console.log(row);
    rows.push(row);
  }
  const machine = `${cpus().length} x ${cpus()[0]?.model ?? 'unknown CPU'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB RAM, Linux ${release()}, Node ${process.version}, ${qemuVersion}`;
  const doc = [
    '# Benchmarks',
    '',
    'Made by `npm run bench`: qimg and qemu-img alternately on the same files, in one run.',
    `Ratio is the median of the per-round ratios qimg/qemu-img (lower is faster). Peak RSS is the child's VmHWM.`,
    '',
    `Machine: ${machine}. Source: ${sizeMiB} MiB raw (random data, text, half-zero blocks, holes). Rounds: ${rounds}.`,
    '',
    'Bench rows show IOPS and the ratio of IOPS (qimg/qemu-img, higher is better); their times are the ones each tool reports.',
    'Where the time goes, what was tried, and which goals are not met: docs/performance.md.',
    '',
    'Encrypted rows (LUKS, AES-256-XTS): at least 5 rounds, `sync` before each command; the volumes are made by qemu-img.',
    '`info` of an encrypted image does not unlock it (as qemu-img\'s does not), so it costs what `info` of any image costs; the',
    'unlock cost shows in the `map` row. qimg\'s figures are with the sectorcrypto addon (`npm install` builds it).',
    '',
    '| work | goal | qemu-img ms | qimg ms | ratio | qemu-img peak MiB | qimg peak MiB | note |',
    '|---|---|---|---|---|---|---|---|',
    ...(only ? mergeRows(rows) : rows),
    '',
  ].join('\n');
  writeFileSync(join(root, 'docs', 'benchmarks.md'), doc);
  console.log('wrote docs/benchmarks.md');
  if (!process.env.BENCH_DIR) rmSync(dir, { recursive: true, force: true });
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
