/**
 * nginx from Debian's packages, serving a directory on a free loopback port
 * from a configuration in a temporary directory, with an access log that
 * records each request's Range header and body bytes (to count what a
 * remote read cost).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const NGINX = ['/usr/sbin/nginx', '/usr/bin/nginx'].find((p) => existsSync(p));

export function haveNginx(): boolean {
  return NGINX !== undefined;
}

export interface AccessLogEntry {
  method: string;
  path: string;
  status: number;
  range: string;
  bytes: number;
}

export interface Nginx {
  /** http://127.0.0.1:PORT */
  origin: string;
  /** Requests logged since the last reset (nginx writes its log line when a request ends). */
  log(): AccessLogEntry[];
  resetLog(): void;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export async function startNginx(root: string): Promise<Nginx> {
  if (!NGINX) throw new Error('nginx is not installed (apt-get install nginx)');
  const dir = mkdtempSync(join(tmpdir(), 'qimg-nginx-'));
  const logPath = join(dir, 'access.log');
  for (let attempt = 0; ; attempt++) {
    const port = await freePort();
    const conf = `
daemon off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log;
${process.getuid?.() === 0 ? 'user root root;' : ''}
events { worker_connections 256; }
http {
  access_log ${logPath} ranged;
  log_format ranged '$request_method $uri $status "$http_range" $body_bytes_sent';
  client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy; fastcgi_temp_path ${dir}/fcgi;
  uwsgi_temp_path ${dir}/uwsgi; scgi_temp_path ${dir}/scgi;
  default_type application/octet-stream;
  sendfile on;
  # qemu's curl driver stalls on kept-alive connections to nginx (a request waits out its
  # timeout now and then); one connection per request keeps both tools going.
  keepalive_timeout 0;
  server {
    listen 127.0.0.1:${port};
    root ${root};
    location / { }
  }
}
`;
    // log_format must come before its use.
    writeFileSync(join(dir, 'nginx.conf'), conf.replace(/(\n  access_log [^\n]*\n)(  log_format [^\n]*\n)/, '\n$2$1'));
    const proc: ChildProcess = spawn(NGINX, ['-p', dir, '-c', join(dir, 'nginx.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const up = await waitUp(port, proc);
    if (!up) {
      proc.kill('SIGKILL');
      if (attempt < 3 && /in use/.test(stderr)) continue;
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`nginx did not start: ${stderr}`);
    }
    let offset = 0;
    return {
      origin: `http://127.0.0.1:${port}`,
      log() {
        if (!existsSync(logPath)) return [];
        const text = readFileSync(logPath, 'utf8').slice(offset);
        return text
          .split('\n')
          .filter(Boolean)
          .map((line) => {
            const m = /^(\S+) (\S+) (\d+) "([^"]*)" (\d+)$/.exec(line);
            if (!m) throw new Error(`unparsed access log line: ${line}`);
            return { method: m[1]!, path: m[2]!, status: Number(m[3]), range: m[4] === '-' ? '' : m[4]!, bytes: Number(m[5]) };
          });
      },
      resetLog() {
        offset = existsSync(logPath) ? readFileSync(logPath, 'utf8').length : 0;
      },
      async stop() {
        proc.kill('SIGQUIT');
        await new Promise((r) => (proc.exitCode !== null ? r(null) : proc.once('exit', r)));
        rmSync(dir, { recursive: true, force: true });
      },
    };
  }
}

async function waitUp(port: number, proc: ChildProcess): Promise<boolean> {
  for (let i = 0; i < 100; i++) {
    if (proc.exitCode !== null) return false;
    const r = spawnSync('bash', ['-c', `exec 3<>/dev/tcp/127.0.0.1/${port}`]);
    if (r.status === 0) return true;
    await new Promise((res) => setTimeout(res, 50));
  }
  return false;
}
