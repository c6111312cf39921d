// Kubernetes' own streaming client for tests: test/streaming/go-client (k8s.io/client-go's
// remotecommand and portforward, a committed go.mod/go.sum) built once with the Go toolchain
// from the module proxy into a cache directory outside the repository, keyed by its sources, at
// low priority. runK8sStream runs it against a streaming URL and returns the JSON it printed.
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runJsonChild } from './json-child';

const SRC = path.resolve(__dirname, '..', 'go-client');
const CACHE = process.env.PODVISOR_TEST_CACHE ?? path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'podvisor-test');

/** Path of the built client, building it first when its sources changed. */
export function k8sStreamBinary(): string {
  const hash = createHash('sha256');
  for (const f of ['go.mod', 'go.sum', 'main.go']) hash.update(fs.readFileSync(path.join(SRC, f)));
  const bin = path.join(CACHE, `k8s-stream-${hash.digest('hex').slice(0, 16)}`);
  if (fs.existsSync(bin)) return bin;
  fs.mkdirSync(CACHE, { recursive: true });
  const tmp = `${bin}.tmp-${process.pid}`;
  execFileSync('nice', ['-n', '10', 'go', 'build', '-mod=readonly', '-trimpath', '-o', tmp, '.'], {
    cwd: SRC,
    stdio: ['ignore', 'ignore', 'pipe'],
    timeout: 600_000,
    env: { ...process.env, CGO_ENABLED: '0' },
  });
  fs.renameSync(tmp, bin);
  return bin;
}

export interface StreamResult {
  stdout: string;
  stderr: string;
  error?: string;
  exitCode: number;
}

/** exec or attach through client-go; `input` is written to its stdin (then closed). */
export function runK8sStream(mode: 'exec' | 'attach', url: string, flags: string[] = [], input?: Buffer | string, opts: { keepStdinOpenMs?: number } = {}): Promise<StreamResult> {
  return runJsonChild('k8s-stream', k8sStreamBinary(), [mode, url, ...flags], (stdin) => {
    if (input !== undefined) stdin.write(input);
    if (opts.keepStdinOpenMs) setTimeout(() => stdin.end(), opts.keepStdinOpenMs);
    else stdin.end();
  });
}

/** client-go port-forward (SPDY) to `remotePort`; resolves once it listens locally. */
export function startK8sStreamPortForward(url: string, remotePort: number): Promise<{ localPort: number; stop(): Promise<void> }> {
  return new Promise((resolve, reject) => {
    const child = spawn(k8sStreamBinary(), ['portforward', url, String(remotePort)], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    const exited = new Promise<void>((r) => child.once('close', () => r()));
    child.stderr.on('data', (d) => (err += d));
    child.stdout.on('data', (d) => {
      out += d;
      if (!out.includes('\n')) return;
      resolve({
        localPort: JSON.parse(out.split('\n')[0]).localPort,
        stop: async () => {
          child.stdin.end();
          const t = setTimeout(() => child.kill('SIGKILL'), 5000);
          await exited;
          clearTimeout(t);
        },
      });
    });
    child.on('error', reject);
    child.on('close', (code) => reject(new Error(`k8s-stream portforward exited ${code}: ${err}`)));
  });
}
