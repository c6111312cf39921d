// Shared set-up for the streaming tests: a server on a free port with the host backend, a
// runner for the client-node script, and small helpers.
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { createLogger } from '../../../src/util/log';
import { StreamingServer, type StreamingOptions } from '../../../src/streaming/server';
import { HostBackend } from './host-backend';
import { runJsonChild } from './json-child';

export async function startServer(opts: Partial<StreamingOptions> = {}) {
  const backend = new HostBackend();
  const server = new StreamingServer(backend, { address: '127.0.0.1', port: 0, logger: createLogger(process.env.STREAMING_TEST_LOG ?? 'silent'), ...opts });
  await server.start();
  /** ends the exec'd processes, then the server */
  const stop = async (): Promise<void> => {
    backend.stop();
    await server.stop();
  };
  return { backend, server, stop };
}

const CLIENT = path.join(__dirname, 'k8s-client.mjs');

/** Runs client-node's exec/attach in its own process; resolves with the JSON it printed. */
export function runK8sClient(mode: 'exec' | 'attach', url: string, opts: object, stdin?: (w: NodeJS.WritableStream) => void): Promise<any> {
  return runJsonChild('k8s-client', process.execPath, [CLIENT, mode, url, JSON.stringify(opts)], (w) => (stdin ? stdin(w) : w.end()));
}

/** Starts client-node's port-forward (one WebSocket per local connection, one URL each). */
export function startK8sPortForward(port: number, urls: string[]): Promise<{ localPort: number; stop(): void }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLIENT, 'portforward', String(port), ...urls], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const line = out.split('\n')[0];
      if (out.includes('\n')) resolve({ localPort: JSON.parse(line).localPort, stop: () => child.kill() });
    });
    child.on('error', reject);
    child.on('close', (code) => reject(new Error(`port-forward client exited ${code}`)));
  });
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
