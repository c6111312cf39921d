// Port-forward to a real HTTP server on 127.0.0.1: SPDY with several connections on one
// session (kubectl's way), WebSocket through client-node's PortForward (a socket per connection).
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { collect, spdyConnect } from './support/spdy-client';
import { sleep, startK8sPortForward, startServer } from './support/harness';

jest.setTimeout(20_000);

function httpGet(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
        let body = '';
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      })
      .on('error', reject);
  });
}

describe('port-forward', () => {
  let ctx: Awaited<ReturnType<typeof startServer>>;
  let web: http.Server;
  let webPort: number;
  let inFlight = 0;
  let maxInFlight = 0;
  beforeAll(async () => {
    ctx = await startServer();
    web = http.createServer((req, res) => {
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      // answer slowly, so that two requests overlap
      setTimeout(() => {
        inFlight--;
        res.end(`hello from ${req.url}`);
      }, 200);
    });
    await new Promise<void>((r) => web.listen(0, '127.0.0.1', r));
    webPort = (web.address() as AddressInfo).port;
  });
  afterAll(async () => {
    await ctx.stop();
    await new Promise((r) => web.close(r));
  });

  /** One forwarded HTTP/1.0 exchange on a SPDY data/error stream pair. */
  async function spdyRequest(c: Awaited<ReturnType<typeof spdyConnect>>, requestID: string, port: number, path: string) {
    const error = c.open({ streamType: 'error', port: String(port), requestID });
    error.end();
    const errText = collect(error);
    const data = c.open({ streamType: 'data', port: String(port), requestID });
    const body = collect(data);
    data.write(`GET ${path} HTTP/1.0\r\nHost: x\r\n\r\n`); // HTTP/1.0: the web server closes after answering
    return { response: (await body).toString(), error: (await errText).toString() };
  }

  test('SPDY: two parallel connections on one session, closed cleanly from the pod side', async () => {
    maxInFlight = 0;
    const { url } = ctx.server.getPortForward({ pod_sandbox_id: 'pod1', port: [webPort] });
    const c = await spdyConnect(url, ['portforward.k8s.io']);
    expect(c.protocol).toBe('portforward.k8s.io');
    const [a, b] = await Promise.all([spdyRequest(c, '0', webPort, '/a'), spdyRequest(c, '1', webPort, '/b')]);
    expect(a.response).toMatch(/^HTTP\/1\.1 200 OK[\s\S]*\r\n\r\nhello from \/a$/);
    expect(b.response).toMatch(/hello from \/b$/);
    expect(a.error).toBe('');
    expect(maxInFlight).toBe(2);
    // the session stays usable for further connections
    const again = await spdyRequest(c, '2', webPort, '/c');
    expect(again.response).toMatch(/hello from \/c$/);
    c.close();
  });

  test('SPDY: a refused port is reported on the error stream', async () => {
    const { url } = ctx.server.getPortForward({ pod_sandbox_id: 'pod1' });
    const c = await spdyConnect(url, ['portforward.k8s.io']);
    const r = await spdyRequest(c, '0', 1, '/');
    expect(r.error).toMatch(/^error forwarding port 1 to pod pod1: .*ECONNREFUSED/);
    c.close();
  });

  test('WebSocket (client-node PortForward): two parallel connections', async () => {
    maxInFlight = 0;
    // one CRI PortForward (so one single-use URL) per WebSocket, as kubelet would be asked
    const urls = [0, 1].map(() => ctx.server.getPortForward({ pod_sandbox_id: 'pod1', port: [webPort] }).url);
    const pf = await startK8sPortForward(webPort, urls);
    try {
      const [a, b] = await Promise.all([httpGet(pf.localPort, '/ws-a'), httpGet(pf.localPort, '/ws-b')]);
      expect(a).toEqual({ status: 200, body: 'hello from /ws-a' });
      expect(b).toEqual({ status: 200, body: 'hello from /ws-b' });
      expect(maxInFlight).toBe(2);
    } finally {
      pf.stop();
    }
    await sleep(50);
  });
});
