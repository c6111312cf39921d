// 100 MiB through exec stdout to a client that does not read for a while: back-pressure must
// reach the process. What is asserted is what the exec'd process could write while its client
// read nothing (its wchar in /proc/<pid>/io): pipe, stream and socket buffers, a few MiB,
// where a server without back-pressure lets `head` write all 100 MiB in milliseconds and holds
// it in memory. The server's memory bound itself is measured on a real daemon's own process in
// e2e/streaming (this jest worker's RSS also holds the SPDY client and the garbage of 100 MiB
// of reads, so it says little about the server).
import { readFileSync } from 'node:fs';
import { collect, spdyConnect } from './support/spdy-client';
import { runK8sClient, sleep, startServer } from './support/harness';

jest.setTimeout(120_000);

const SIZE = 100 * 1024 * 1024;
/** what buffers between `head` and a paused client may hold: far below SIZE */
const BUFFERED_LIMIT = 24 * 1024 * 1024;
const MiB = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;

/** bytes the process has written so far; null once it is gone */
function written(pid: number): number | null {
  try {
    return Number(/^wchar: (\d+)$/m.exec(readFileSync(`/proc/${pid}/io`, 'utf8'))![1]);
  } catch {
    return null;
  }
}

async function execPid(backend: { execPids: number[] }, index: number): Promise<number> {
  for (let i = 0; i < 1000 && backend.execPids.length <= index; i++) await sleep(10);
  expect(backend.execPids.length).toBeGreaterThan(index);
  return backend.execPids[index];
}

/**
 * Waits until the process stops writing (the same figure over 500 ms): where back-pressure
 * holds it while the client reads nothing. Null when it ended first (nothing held it).
 */
async function plateau(pid: number): Promise<number | null> {
  let last = written(pid);
  for (let same = 0; same < 5; ) {
    await sleep(100);
    const now = written(pid);
    if (now === null || last === null) return null;
    same = now === last ? same + 1 : 0;
    last = now;
  }
  return last;
}

describe('back-pressure on 100 MiB of exec output', () => {
  let ctx: Awaited<ReturnType<typeof startServer>>;
  beforeAll(async () => (ctx = await startServer()));
  afterAll(() => ctx.stop());
  const url = () => ctx.server.getExec({ container_id: 'c1', stdout: true, cmd: ['head', '-c', String(SIZE), '/dev/zero'] }).url;

  test('SPDY: a client that reads nothing holds the process; then every byte arrives', async () => {
    const first = ctx.backend.execPids.length;
    const c = await spdyConnect(url(), ['v4.channel.k8s.io']);
    c.socket.pause(); // a client that reads nothing until resumed
    const error = c.open({ streamType: 'error' });
    error.end();
    const status = collect(error);
    const out = c.open({ streamType: 'stdout' });
    out.end();
    let bytes = 0;
    const done = new Promise<void>((resolve, reject) => {
      out.on('data', (d: Buffer) => (bytes += d.length));
      out.on('end', resolve);
      out.on('error', reject);
    });
    const held = await plateau(await execPid(ctx.backend, first));
    console.log(`SPDY: the process wrote ${held === null ? 'everything' : MiB(held)} while its client read nothing`);
    expect(held).not.toBeNull();
    expect(held!).toBeLessThan(BUFFERED_LIMIT);
    c.socket.resume();
    await done;
    expect((await status).toString()).toBe('{"metadata":{},"status":"Success"}');
    c.close();
    expect(bytes).toBe(SIZE);
  });

  test('WebSocket (client-node): a client that reads nothing holds the process; then every byte arrives', async () => {
    const first = ctx.backend.execPids.length;
    // the client pauses for 8 s from its connection; the plateau shows within a second of it
    const result = runK8sClient('exec', url(), { pauseMs: 8000, countOnly: true });
    const held = await plateau(await execPid(ctx.backend, first));
    console.log(`WebSocket: the process wrote ${held === null ? 'everything' : MiB(held)} while its client read nothing`);
    const r = await result;
    expect(held).not.toBeNull();
    expect(held!).toBeLessThan(BUFFERED_LIMIT);
    expect(r.status).toEqual({ metadata: {}, status: 'Success' });
    expect(r.stdoutBytes).toBe(SIZE);
  });
});
