// 100 MiB through exec stdout to a client that does not read for the first 2 s: back-pressure
// must reach the process, so the server's memory stays flat (SPDY client in this process,
// client-node WebSocket client in its own).
import { collect, spdyConnect } from './support/spdy-client';
import { runK8sClient, startServer } from './support/harness';

jest.setTimeout(120_000);

const SIZE = 100 * 1024 * 1024;
const LIMIT = 64 * 1024 * 1024;

function rssWatch() {
  const base = process.memoryUsage().rss;
  let peak = base;
  const t = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
  return {
    growth: () => {
      clearInterval(t);
      return Math.max(peak, process.memoryUsage().rss) - base;
    },
  };
}

describe('back-pressure on 100 MiB of exec output', () => {
  let ctx: Awaited<ReturnType<typeof startServer>>;
  beforeAll(async () => (ctx = await startServer()));
  afterAll(() => ctx.stop());
  const url = () => ctx.server.getExec({ container_id: 'c1', stdout: true, cmd: ['head', '-c', String(SIZE), '/dev/zero'] }).url;

  test('SPDY', async () => {
    const watch = rssWatch();
    const c = await spdyConnect(url(), ['v4.channel.k8s.io']);
    c.socket.pause(); // a client that reads nothing for a while
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
    await new Promise((r) => setTimeout(r, 2000));
    c.socket.resume();
    await done;
    expect((await status).toString()).toBe('{"metadata":{},"status":"Success"}');
    c.close();
    expect(bytes).toBe(SIZE);
    const growth = watch.growth();
    console.log(`SPDY: rss growth ${(growth / 1048576).toFixed(1)} MiB`);
    expect(growth).toBeLessThan(LIMIT);
  });

  test('WebSocket (client-node)', async () => {
    const watch = rssWatch();
    const r = await runK8sClient('exec', url(), { pauseMs: 2000, countOnly: true });
    expect(r.status).toEqual({ metadata: {}, status: 'Success' });
    expect(r.stdoutBytes).toBe(SIZE);
    const growth = watch.growth();
    console.log(`WebSocket: rss growth ${(growth / 1048576).toFixed(1)} MiB`);
    expect(growth).toBeLessThan(LIMIT);
  });
});
