/**
 * The fuzzer's worker thread: runs every target on the cases the main
 * thread sends, announcing each target before it starts so that the main
 * thread can tell a hang (and kill this thread, which also stops a
 * synchronous loop) from slow progress.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { applyEdits, type Edit } from './mutate.js';
import type { Seed } from './seeds.js';
import { runCli, runTarget, signature, TARGET_NAMES, type FuzzCase, type TargetName, type TargetResult } from './targets.js';

export interface CaseMessage {
  type: 'case';
  id: number;
  seedIndex: number;
  edits: Edit[];
  caseSeed: number;
  cli: boolean;
}

export type WorkerMessage =
  | { type: 'ready' }
  | { type: 'target'; id: number; target: string; deadline: number }
  | {
      type: 'done';
      id: number;
      results: TargetResult[];
      /** Per finding signature, the fewest edits that still produce it. */
      minimised: Record<string, Edit[]>;
      rss: number;
      restart: boolean;
    };

interface WorkerConfig {
  seeds: Seed[];
  timeoutMs: number;
  cliTimeoutMs: number;
  rssLimit: number;
}

const cfg = workerData as WorkerConfig;
const port = parentPort!;
const post = (m: WorkerMessage): void => port.postMessage(m);

function caseOf(seed: Seed, edits: readonly Edit[], caseSeed: number): FuzzCase {
  return { file: seed.file, format: seed.format, bytes: applyEdits(seed.bytes, edits), sidecars: seed.sidecars, caseSeed };
}

const targetsFor = (format: Seed['format']): TargetName[] => TARGET_NAMES.filter((t) => format !== 'raw' || (t !== 'check' && t !== 'check-fix'));

async function runCase(m: CaseMessage): Promise<void> {
  const seed = cfg.seeds[m.seedIndex]!;
  const c = caseOf(seed, m.edits, m.caseSeed);
  const results: TargetResult[] = [];
  let restart = false;
  let size: number | undefined;
  // Memory still held from an earlier case is not this case's fault.
  const startRss = process.memoryUsage.rss();
  for (const t of targetsFor(seed.format)) {
    post({ type: 'target', id: m.id, target: t, deadline: Date.now() + cfg.timeoutMs });
    const r = await runTarget(t, c, cfg.timeoutMs);
    const rss = process.memoryUsage.rss();
    if (rss > cfg.rssLimit && startRss > cfg.rssLimit) restart = true;
    else if (!r.finding && rss > cfg.rssLimit) {
      r.finding = 'memory';
      r.error = { name: 'Memory', message: `rss ${Math.round(rss / 2 ** 20)} MiB after ${t}` };
    }
    results.push(r);
    if (restart || r.finding === 'hang' || r.finding === 'memory') {
      restart = true;
      break;
    }
    if (t === 'open-named' && !r.error) size = c.bytes.length;
  }
  if (m.cli && !restart) {
    const n = 6;
    post({ type: 'target', id: m.id, target: 'cli', deadline: Date.now() + n * cfg.cliTimeoutMs + 5000 });
    // Convert writes the whole virtual disk to a file: only for images whose open succeeded and stays small.
    results.push(...runCli(c, cfg.cliTimeoutMs, size !== undefined && c.bytes.length < 8 * 1024 * 1024));
  }

  // Cheap minimisation: drop edits one at a time while the same finding remains.
  const minimised: Record<string, Edit[]> = {};
  if (!restart) {
    for (const r of results) {
      if ((r.finding !== 'exception' && r.finding !== 'invariant') || r.target.startsWith('cli')) continue;
      const sig = signature(r);
      if (minimised[sig]) continue;
      let edits = m.edits;
      for (let i = edits.length - 1; i >= 0 && edits.length > 1; i--) {
        const fewer = edits.filter((_, k) => k !== i);
        post({ type: 'target', id: m.id, target: `minimise ${r.target}`, deadline: Date.now() + cfg.timeoutMs });
        const again = await runTarget(r.target as TargetName, caseOf(seed, fewer, m.caseSeed), cfg.timeoutMs);
        if (again.finding === 'hang') {
          restart = true;
          break;
        }
        if (again.finding && signature(again) === sig) edits = fewer;
      }
      minimised[sig] = edits;
      if (restart) break;
    }
  }
  post({ type: 'done', id: m.id, results, minimised, rss: process.memoryUsage.rss(), restart });
}

port.on('message', (m: CaseMessage) => {
  runCase(m).catch((e: unknown) => {
    // The harness itself failed: report it as a finding of the case.
    post({
      type: 'done',
      id: m.id,
      results: [{ target: 'harness', ms: 0, finding: 'exception', error: { name: 'HarnessError', message: String(e), stack: e instanceof Error ? e.stack : undefined } }],
      minimised: {},
      rss: process.memoryUsage.rss(),
      restart: true,
    });
  });
});
post({ type: 'ready' });
