/**
 * One test on one format with one toolset: QEMU's own `check` script, in a
 * scratch directory of its own, killed (with its children) at the timeout.
 */
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Format } from './select.js';
import type { Tools, Toolset } from './tools.js';

export type Status = 'pass' | 'fail' | 'notrun' | 'timeout';

export interface CaseResult {
  test: string;
  format: Format;
  toolset: Toolset;
  status: Status;
  seconds: number;
  /** Why it did not run, or how it failed. */
  detail?: string;
  /** Saved unified diff of expected vs actual output (failures). */
  diffFile?: string;
}

export interface CaseOptions {
  iotestsDir: string;
  tools: Tools;
  timeoutMs: number;
  /** Where failure diffs and outputs are kept. */
  resultDir: string;
}

function diffOf(expected: string, actual: string): string {
  return spawnSync('diff', ['-u', expected, actual], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 }).stdout;
}

/** The expected-output file `check` compares against for this format. */
function reference(iotestsDir: string, path: string, format: Format): string {
  const perFormat = join(iotestsDir, `${path}.out.${format}`);
  if (existsSync(perFormat)) return perFormat;
  const perMachine = join(iotestsDir, `${path}.pc.out`);
  if (existsSync(perMachine)) return perMachine;
  return join(iotestsDir, `${path}.out`);
}

export function runCase(name: string, path: string, format: Format, toolset: Toolset, o: CaseOptions): Promise<CaseResult> {
  const scratch = mkdtempSync(join(tmpdir(), `qimg-iot-${toolset}-`));
  const testDir = join(scratch, 't');
  const sockDir = join(scratch, 's');
  mkdirSync(testDir);
  mkdirSync(sockDir);
  // A diff from an earlier run must not outlive a pass.
  const keep = join(o.resultDir, toolset, format);
  for (const f of [`${name}.out.bad`, `${name}.diff`]) rmSync(join(keep, f), { force: true });
  const t0 = Date.now();
  const env = {
    ...process.env,
    QEMU_PROG: o.tools.QEMU_PROG,
    QEMU_IMG_PROG: o.tools.QEMU_IMG_PROG,
    QEMU_IO_PROG: o.tools.QEMU_IO_PROG,
    QEMU_NBD_PROG: o.tools.QEMU_NBD_PROG,
    QSD_PROG: o.tools.QSD_PROG,
    TEST_DIR: testDir,
    SOCK_DIR: sockDir,
    PATH: `${o.tools.binDir}:${process.env.PATH ?? ''}`,
  };
  return new Promise((resolve) => {
    const child = spawn('python3', ['check', '-tap', `-${format}`, name], { cwd: o.iotestsDir, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }, o.timeoutMs);
    child.on('close', () => {
      clearTimeout(timer);
      const seconds = (Date.now() - t0) / 1000;
      const bad = join(testDir, `${name}.out.bad`);
      const notrun = join(testDir, `${name}.notrun`);
      let status: Status;
      let detail: string | undefined;
      if (timedOut) {
        status = 'timeout';
        detail = `killed after ${o.timeoutMs / 1000} s`;
      } else if (new RegExp(`^ok ${format} ${name} # SKIP`, 'm').test(output)) {
        status = 'notrun';
        detail = existsSync(notrun) ? readFileSync(notrun, 'utf8').trim() : undefined;
      } else if (new RegExp(`^ok ${format} ${name}$`, 'm').test(output)) {
        status = 'pass';
      } else {
        status = 'fail';
        detail = output.split('\n').filter((l) => l.startsWith('#') || /failed|mismatch/.test(l)).slice(0, 3).join(' ').slice(0, 200) || undefined;
      }
      let diffFile: string | undefined;
      if ((status === 'fail' || status === 'timeout') && existsSync(bad)) {
        mkdirSync(keep, { recursive: true });
        copyFileSync(bad, join(keep, `${name}.out.bad`));
        diffFile = join(keep, `${name}.diff`);
        writeFileSync(diffFile, diffOf(reference(o.iotestsDir, path, format), bad));
      }
      rmSync(scratch, { recursive: true, force: true });
      resolve({ test: name, format, toolset, status, seconds, detail, diffFile });
    });
  });
}
