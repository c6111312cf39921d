// CRI side of streaming: request validation, URL shape, single-use expiring tokens, HTTP errors.
import * as http from 'node:http';
import { WebSocket } from 'ws';
import { streamingHandlers } from '../../src/cri/streaming';
import { TokenCache } from '../../src/streaming/tokens';
import { spdyConnect, UpgradeError } from './support/spdy-client';
import { sleep, startServer } from './support/harness';

const get = (url: string, headers: http.OutgoingHttpHeaders = {}) =>
  new Promise<{ status: number; body: string }>((resolve, reject) => {
    http
      .get(url, { headers }, (res) => {
        let body = '';
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      })
      .on('error', reject);
  });

const wsStatus = (url: string, protocols: string[]) =>
  new Promise<{ status: number; body: string }>((resolve, reject) => {
    const ws = new WebSocket(url.replace(/^http/, 'ws'), protocols);
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    ws.on('open', () => reject(new Error('websocket opened')));
    ws.on('error', () => undefined);
  });

describe('streaming URLs', () => {
  let ctx: Awaited<ReturnType<typeof startServer>>;
  beforeAll(async () => (ctx = await startServer({ tokenTtlMs: 300, maxTokens: 5 })));
  afterAll(() => ctx.stop());

  test('Exec/Attach/PortForward return kubelet-shaped URLs with random tokens', async () => {
    const h = streamingHandlers(ctx.server);
    const e = await h.Exec({ container_id: 'c1', cmd: ['true'], stdout: true });
    const a = await h.Attach({ container_id: 'c1', stdout: true });
    const p = await h.PortForward({ pod_sandbox_id: 'pod1', port: [80] });
    expect(ctx.server.baseUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(e.url).toMatch(new RegExp(`^${ctx.server.baseUrl}/exec/[A-Za-z0-9_-]{22}$`));
    expect(a.url).toMatch(/\/attach\/[A-Za-z0-9_-]{22}$/);
    expect(p.url).toMatch(/\/portforward\/[A-Za-z0-9_-]{22}$/);
    expect(new Set([e.url, a.url, p.url].map((u) => u!.split('/').pop())).size).toBe(3);
    await sleep(350); // let these expire: the cache is small
  });

  test.each([
    ['unknown container', { container_id: 'nope', cmd: ['true'], stdout: true }, 'not_found'],
    ['stopped container', { container_id: 'stopped', cmd: ['true'], stdout: true }, 'failed_precondition'],
    ['no command', { container_id: 'c1', cmd: [], stdout: true }, 'invalid_argument'],
    ['no container id', { cmd: ['true'], stdout: true }, 'invalid_argument'],
    ['no stdio', { container_id: 'c1', cmd: ['true'] }, 'invalid_argument'],
    ['tty with stderr', { container_id: 'c1', cmd: ['true'], tty: true, stdout: true, stderr: true }, 'invalid_argument'],
  ])('Exec rejects %s', async (_name, req, code) => {
    await expect(streamingHandlers(ctx.server).Exec(req)).rejects.toMatchObject({ code });
  });

  test('Attach and PortForward are validated too', async () => {
    const h = streamingHandlers(ctx.server);
    await expect(h.Attach({ container_id: 'nope', stdout: true })).rejects.toMatchObject({ code: 'not_found' });
    await expect(h.Attach({ container_id: 'stopped', stdout: true })).rejects.toMatchObject({ code: 'failed_precondition' });
    await expect(h.Attach({ container_id: 'c1' })).rejects.toMatchObject({ code: 'invalid_argument' });
    await expect(h.PortForward({ pod_sandbox_id: 'nope' })).rejects.toMatchObject({ code: 'not_found' });
    await expect(h.PortForward({ pod_sandbox_id: 'pod1', port: [70000] })).rejects.toMatchObject({ code: 'invalid_argument' });
  });

  test('a token works once, and not after its TTL', async () => {
    const { url } = ctx.server.getExec({ container_id: 'c1', cmd: ['true'], stdout: true });
    const c = await spdyConnect(url, ['v4.channel.k8s.io']);
    c.close();
    await expect(spdyConnect(url, ['v4.channel.k8s.io'])).rejects.toMatchObject({ status: 404 });

    const late = ctx.server.getExec({ container_id: 'c1', cmd: ['true'], stdout: true }).url;
    await sleep(350);
    await expect(spdyConnect(late, ['v4.channel.k8s.io'])).rejects.toMatchObject({ status: 404 });
  });

  test('bad tokens and paths answer 404; a plain GET answers 400', async () => {
    expect((await get(`${ctx.server.baseUrl}/exec/not-a-token`)).status).toBe(404);
    expect((await get(`${ctx.server.baseUrl}/nothing`)).status).toBe(404);
    expect((await wsStatus(`${ctx.server.baseUrl}/attach/nope`, ['v4.channel.k8s.io'])).status).toBe(404);
    const { url } = ctx.server.getExec({ container_id: 'c1', cmd: ['true'], stdout: true });
    // an exec token is no attach token
    expect((await get(url.replace('/exec/', '/attach/'))).status).toBe(404);
    const plain = await get(url);
    expect(plain).toEqual({ status: 400, body: 'Upgrade request required\n' });
  });

  test('protocol negotiation failures are clear HTTP errors and keep the token', async () => {
    const { url } = ctx.server.getExec({ container_id: 'c1', cmd: ['true'], stdout: true });
    const err = (await spdyConnect(url, ['v9.channel.k8s.io']).catch((e) => e)) as UpgradeError;
    expect(err).toBeInstanceOf(UpgradeError);
    expect(err.status).toBe(403);
    expect(err.body).toBe(
      'unable to upgrade: unable to negotiate protocol: client supports [v9.channel.k8s.io], server accepts ' +
        '[v5.channel.k8s.io v4.channel.k8s.io v3.channel.k8s.io v2.channel.k8s.io channel.k8s.io]',
    );
    expect(err.headers['x-accepted-stream-protocol-versions']).toContain('v4.channel.k8s.io');
    expect(await spdyConnect(url, []).catch((e) => e)).toMatchObject({ status: 400, body: expect.stringContaining('X-Stream-Protocol-Version is required') });
    const ws = await wsStatus(url, ['bogus.k8s.io']);
    expect(ws.status).toBe(400);
    expect(ws.body).toContain('requested protocol(s) are not supported: [bogus.k8s.io]');
    // the failed attempts did not use the token up
    (await spdyConnect(url, ['v4.channel.k8s.io'])).close();
  });

  test('the token cache is bounded: RESOURCE_EXHAUSTED when full', async () => {
    await sleep(350);
    const h = streamingHandlers(ctx.server);
    for (let i = 0; i < 5; i++) await h.Exec({ container_id: 'c1', cmd: ['true'], stdout: true });
    await expect(h.Exec({ container_id: 'c1', cmd: ['true'], stdout: true })).rejects.toMatchObject({ code: 'resource_exhausted' });
    await sleep(350);
    await expect(h.Exec({ container_id: 'c1', cmd: ['true'], stdout: true })).resolves.toHaveProperty('url');
  });
});

describe('TokenCache', () => {
  test('expires by TTL and evicts expired entries before refusing', () => {
    let now = 0;
    const c = new TokenCache({ ttlMs: 60_000, maxEntries: 2, now: () => now });
    const a = c.insert({ kind: 'portforward', sandboxId: 'p', ports: [] });
    c.insert({ kind: 'portforward', sandboxId: 'p', ports: [] });
    expect(() => c.insert({ kind: 'portforward', sandboxId: 'p', ports: [] })).toThrow(/too many/);
    now = 59_999;
    expect(c.peek(a)).toBeDefined();
    now = 60_000;
    expect(c.peek(a)).toBeUndefined();
    c.insert({ kind: 'portforward', sandboxId: 'p', ports: [] });
    expect(c.size).toBe(1);
  });
});
