/**
 * The fuzz loop: case i of fuzz seed S is a pure function of (S, i) (which
 * seed image, which edits, the targets' own choices), so any finding
 * replays from its JSON. The main thread generates cases, a worker thread
 * runs them; the main thread watches deadlines and the process's RSS and
 * replaces the worker after a hang, a memory blow-up or a crash.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { analyse, applyEdits, mix, mutate, Rng, type Edit, type Layout } from './mutate.js';
import type { Seed } from './seeds.js';
import { signature, type TargetResult } from './targets.js';
import type { CaseMessage, WorkerMessage } from './worker.js';

export interface FuzzOptions {
  seeds: Seed[];
  /** The fuzz seed: the same seed, the same cases. */
  seed: number;
  runs?: number;
  seconds?: number;
  /** Every n-th case also goes through the CLI (0: never). */
  cliEvery?: number;
  timeoutMs?: number;
  cliTimeoutMs?: number;
  rssLimit?: number;
  /** Save findings here (image, files it names, finding.json). */
  findingsDir?: string;
  log?: (line: string) => void;
  /** Progress line interval in ms (0: none). */
  progressMs?: number;
}

export interface Finding {
  signature: string;
  kind: NonNullable<TargetResult['finding']>;
  target: string;
  error: TargetResult['error'];
  seedImage: string;
  fuzzSeed: number;
  iteration: number;
  edits: Edit[];
  minimisedEdits: Edit[];
  count: number;
  dir?: string;
}

export interface FuzzSummary {
  executions: number;
  seconds: number;
  execsPerSecond: number;
  /** Unique findings (by signature). */
  findings: Finding[];
  /** All failing cases, counting repeats. */
  findingCases: number;
  peakRss: number;
  cliRuns: number;
  /** Per target: runs, failures with an ImageError, total ms, the slowest run and its case. */
  targets: Record<string, { runs: number; errors: number; ms: number; maxMs: number; slowestCase: number }>;
  workerRestarts: number;
}

interface Pending {
  id: number;
  msg: CaseMessage;
  target: string;
  deadline: number;
  resolve: (m: Extract<WorkerMessage, { type: 'done' }>) => void;
}

// A JavaScript entry that installs the TypeScript loader first (workers do not inherit it).
const WORKER_URL = new URL('./worker-boot.mjs', import.meta.url);

class WorkerHost {
  private worker!: Worker;
  private ready!: Promise<void>;
  pending: Pending | undefined;
  restarts = 0;

  constructor(
    private readonly data: unknown,
    private readonly rssLimit: number,
  ) {
    this.start();
  }

  private start(): void {
    this.worker = new Worker(WORKER_URL, { workerData: this.data, resourceLimits: { maxOldGenerationSizeMb: 1024 } });
    const worker = this.worker;
    this.ready = new Promise((res, rej) => {
      const onMsg = (m: WorkerMessage): void => {
        if (m.type === 'ready') {
          worker.off('message', onMsg);
          worker.off('error', onErr);
          res();
        }
      };
      const onErr = (e: Error): void => rej(new Error(`fuzz worker failed to start: ${e.stack ?? String(e)}`));
      worker.on('message', onMsg);
      worker.on('error', onErr);
    });
    this.ready.catch(() => {});
    this.worker.on('message', (m: WorkerMessage) => {
      const p = this.pending;
      if (!p || m.type === 'ready' || m.id !== p.id) return;
      if (m.type === 'target') {
        p.target = m.target;
        p.deadline = m.deadline;
      } else {
        this.pending = undefined;
        p.resolve(m);
      }
    });
    worker.on('error', (e) => this.fail('exception', `worker died: ${e.stack ?? String(e)}`, e.name));
    this.worker.on('exit', (code) => {
      if (this.pending) this.fail('exception', `worker exited with code ${code}`, 'WorkerExit');
    });
  }

  /** End the current case with a finding and replace the worker. */
  fail(kind: 'hang' | 'memory' | 'exception', message: string, name: string): void {
    const p = this.pending;
    if (!p) return;
    this.pending = undefined;
    const w = this.worker;
    this.terminating = w.terminate().then(() => {});
    this.restarts++;
    this.start();
    p.resolve({ type: 'done', id: p.id, results: [{ target: p.target, ms: 0, finding: kind, error: { name, message } }], minimised: {}, rss: 0, restart: false });
  }

  /** The replaced worker's exit, and its memory returned, before the next case is measured. */
  private terminating: Promise<void> | undefined;

  async run(msg: CaseMessage): Promise<Extract<WorkerMessage, { type: 'done' }>> {
    if (this.terminating) {
      await this.terminating;
      this.terminating = undefined;
      await settleRss(this.rssLimit);
    }
    await this.ready;
    return new Promise((resolve) => {
      this.pending = { id: msg.id, msg, target: 'start', deadline: Date.now() + 60_000, resolve };
      this.worker.postMessage(msg);
    });
  }

  async restart(): Promise<void> {
    await this.worker.terminate();
    this.restarts++;
    this.start();
    await settleRss(this.rssLimit);
  }

  async close(): Promise<void> {
    this.pending = undefined;
    await this.worker.terminate();
  }
}

/** Wait (a few seconds at most) until the process is well under the limit again. */
async function settleRss(limit: number): Promise<void> {
  for (let i = 0; i < 60 && process.memoryUsage.rss() > limit * 0.75; i++) await new Promise((r) => setTimeout(r, 50));
}

export async function runFuzz(opts: FuzzOptions): Promise<FuzzSummary> {
  const log = opts.log ?? (() => {});
  const timeoutMs = opts.timeoutMs ?? 5000;
  const rssLimit = opts.rssLimit ?? 512 * 1024 * 1024;
  const seeds = opts.seeds;
  const layouts: Layout[] = seeds.map(analyse);
  const host = new WorkerHost({ seeds, timeoutMs, cliTimeoutMs: opts.cliTimeoutMs ?? 15_000, rssLimit }, rssLimit);

  const summary: FuzzSummary = { executions: 0, seconds: 0, execsPerSecond: 0, findings: [], findingCases: 0, peakRss: 0, cliRuns: 0, targets: {}, workerRestarts: 0 };
  const bySig = new Map<string, Finding>();
  const t0 = Date.now();
  const grace = 2000;

  // The watchdog: deadlines (synchronous loops never yield to the worker's own timer) and RSS.
  const watchdog = setInterval(() => {
    const rss = process.memoryUsage.rss();
    summary.peakRss = Math.max(summary.peakRss, rss);
    const p = host.pending;
    if (!p) return;
    if (rss > rssLimit) host.fail('memory', `rss ${Math.round(rss / 2 ** 20)} MiB during ${p.target}`, 'Memory');
    else if (Date.now() > p.deadline + grace) host.fail('hang', `${p.target} ran past its deadline (${timeoutMs} ms)`, 'Hang');
  }, 50);

  let lastProgress = t0;
  const progress = (): void => {
    const s = (Date.now() - t0) / 1000;
    log(`[${s.toFixed(0)}s] execs ${summary.executions} (${(summary.executions / Math.max(s, 0.001)).toFixed(1)}/s) findings ${summary.findingCases} unique ${bySig.size} peak rss ${Math.round(summary.peakRss / 2 ** 20)} MiB`);
  };

  try {
    for (let i = 0; ; i++) {
      if (opts.runs !== undefined && i >= opts.runs) break;
      if (opts.seconds !== undefined && Date.now() - t0 >= opts.seconds * 1000) break;
      const rng = new Rng(mix(opts.seed, i));
      const seedIndex = rng.int(seeds.length);
      const seed = seeds[seedIndex]!;
      const edits = mutate(seed, layouts[seedIndex]!, rng);
      const caseSeed = rng.int(0x1_0000_0000);
      const cli = (opts.cliEvery ?? 0) > 0 && i % opts.cliEvery! === opts.cliEvery! - 1;
      const done = await host.run({ type: 'case', id: i, seedIndex, edits, caseSeed, cli });
      summary.executions++;
      summary.peakRss = Math.max(summary.peakRss, done.rss);
      let failed = false;
      for (const r of done.results) {
        if (r.target.startsWith('cli')) summary.cliRuns++;
        const t = (summary.targets[r.target.startsWith('cli') ? 'cli' : r.target] ??= { runs: 0, errors: 0, ms: 0, maxMs: 0, slowestCase: -1 });
        t.runs++;
        t.ms += r.ms;
        if (r.ms > t.maxMs) {
          t.maxMs = r.ms;
          t.slowestCase = i;
        }
        if (r.error && !r.finding) t.errors++;
        if (!r.finding) continue;
        failed = true;
        const sig = signature(r);
        const known = bySig.get(sig);
        if (known) {
          known.count++;
          continue;
        }
        const f: Finding = {
          signature: sig,
          kind: r.finding,
          target: r.target,
          error: r.error,
          seedImage: seed.name,
          fuzzSeed: opts.seed,
          iteration: i,
          edits,
          minimisedEdits: done.minimised[sig] ?? edits,
          count: 1,
        };
        bySig.set(sig, f);
        summary.findings.push(f);
        log(`finding #${bySig.size} (case ${i}, ${seed.name}): ${r.finding} in ${r.target}: ${r.error?.name}: ${r.error?.message.split('\n')[0]}`);
        if (opts.findingsDir) f.dir = saveFinding(opts.findingsDir, f, seed);
      }
      if (failed) summary.findingCases++;
      if (done.restart) await host.restart();
      if (opts.progressMs && Date.now() - lastProgress >= opts.progressMs) {
        lastProgress = Date.now();
        progress();
      }
    }
  } finally {
    clearInterval(watchdog);
    await host.close();
  }
  summary.seconds = (Date.now() - t0) / 1000;
  summary.execsPerSecond = summary.executions / Math.max(summary.seconds, 0.001);
  summary.workerRestarts = host.restarts;
  if (opts.findingsDir) {
    // Final counts; the directory may have been cleared meanwhile (a second run sharing it).
    for (const f of summary.findings) if (f.dir) f.dir = saveFinding(opts.findingsDir, f, seeds.find((x) => x.name === f.seedImage)!);
  }
  progress();
  return summary;
}

function findingJson(f: Finding): string {
  return `${JSON.stringify({ ...f, dir: undefined }, null, 2)}\n`;
}

/** The minimised image, the files it names, and the description. */
function saveFinding(root: string, f: Finding, seed: Seed): string {
  const id = createHash('sha1').update(f.signature).digest('hex').slice(0, 12);
  const dir = join(root, `${f.kind}-${f.target.replace(/[^a-z0-9-]+/gi, '_').slice(0, 40)}-${id}`);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, seed.file), applyEdits(seed.bytes, f.minimisedEdits));
  for (const [name, bytes] of Object.entries(seed.sidecars)) writeFileSync(join(dir, name), bytes);
  writeFileSync(join(dir, 'finding.json'), findingJson(f));
  return dir;
}
