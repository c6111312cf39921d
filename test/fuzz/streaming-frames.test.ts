// Fuzz: random, malformed and hostile SPDY/3.1 frames and WebSocket messages against the real
// streaming server (host processes stand in for pods): valid and broken SYN_STREAMs with random
// headers, DATA for any stream, PING/RST/GOAWAY/SETTINGS/WINDOW_UPDATE with bodies of any length,
// raw garbage, random WebSocket channels, base64 text, v5 close frames. After each case the
// connection is gone or still usable; after all of them a normal exec still works, no session
// is left open, and the process's peak RSS over the run is printed and bounded.
import { WebSocket } from 'ws';
import { FrameType, controlFrame, dataFrameHeader } from '../../src/streaming/spdy-codec';
import { fc, fuzzParams } from '../support/fuzz';
import { MiB, measurePeak } from '../support/rss';
import { startServer } from '../streaming/support/harness';
import { newDeflate, rawSpdyConnect, synStream } from '../streaming/support/raw-spdy';
import { spdyExec } from '../streaming/support/spdy-client';

jest.setTimeout(120_000);

let ctx: Awaited<ReturnType<typeof startServer>>;
beforeAll(async () => (ctx = await startServer({ streamCreationTimeoutMs: 1000 })));
afterAll(() => ctx.stop());

const STREAM_TYPES = ['error', 'stdin', 'stdout', 'stderr', 'resize', 'data', 'x', ''];
type SpdyOp =
  | { op: 'syn'; id: number; headers: Record<string, string>; fin: boolean }
  | { op: 'data'; id: number; bytes: Uint8Array; fin: boolean }
  | { op: 'control'; type: number; flags: number; body: Uint8Array }
  | { op: 'raw'; bytes: Uint8Array };

const spdyOp: fc.Arbitrary<SpdyOp> = fc.oneof(
  fc.record({
    op: fc.constant('syn' as const),
    id: fc.oneof(fc.integer({ min: 0, max: 12 }), fc.integer({ min: 0, max: 0x7fffffff })),
    headers: fc.dictionary(fc.oneof(fc.constantFrom('streamtype', 'port', 'requestid'), fc.string({ maxLength: 20 })), fc.oneof(fc.constantFrom(...STREAM_TYPES, '80', '0', '65536'), fc.string({ maxLength: 40 })), { maxKeys: 4 }),
    fin: fc.boolean(),
  }),
  fc.record({ op: fc.constant('data' as const), id: fc.integer({ min: 0, max: 12 }), bytes: fc.uint8Array({ maxLength: 300 }), fin: fc.boolean() }),
  fc.record({ op: fc.constant('control' as const), type: fc.integer({ min: 0, max: 12 }), flags: fc.integer({ min: 0, max: 255 }), body: fc.uint8Array({ maxLength: 40 }) }),
  fc.record({ op: fc.constant('raw' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 64 }) }),
);

async function spdyCase(ops: SpdyOp[], portforward: boolean): Promise<void> {
  const url = portforward
    ? ctx.server.getPortForward({ pod_sandbox_id: 'pod1', port: [1] }).url
    : ctx.server.getExec({ container_id: 'c1', cmd: ['cat'], stdin: true, stdout: true, stderr: true }).url;
  const c = await rawSpdyConnect(url, portforward ? 'portforward.k8s.io' : 'v4.channel.k8s.io');
  const deflate = newDeflate();
  for (const o of ops) {
    if (c.socket.destroyed) break;
    let bytes: Buffer;
    if (o.op === 'syn') {
      bytes = await synStream(o.id, o.headers, deflate);
      if (o.fin) bytes[4] |= 0x01;
    } else if (o.op === 'data') bytes = Buffer.concat([dataFrameHeader(o.id, o.fin ? 1 : 0, o.bytes.length), Buffer.from(o.bytes)]);
    else if (o.op === 'control') bytes = controlFrame(o.type, o.flags, Buffer.from(o.body));
    else bytes = Buffer.from(o.bytes);
    c.socket.write(bytes);
  }
  await new Promise((r) => setTimeout(r, 5));
  c.socket.destroy();
  deflate.close();
  await c.closed;
}

type WsOp = { binary: boolean; bytes: Uint8Array } | { text: string };
const wsOp: fc.Arbitrary<WsOp> = fc.oneof(
  fc.record({ binary: fc.constant(true), bytes: fc.oneof(fc.uint8Array({ maxLength: 200 }), fc.tuple(fc.constantFrom(0, 1, 2, 3, 4, 255), fc.uint8Array({ maxLength: 50 })).map(([ch, b]) => Uint8Array.from([ch, ...b]))) }),
  fc.record({ text: fc.oneof(fc.string({ maxLength: 100 }), fc.tuple(fc.constantFrom('0', '4', '9'), fc.base64String({ maxLength: 60 })).map(([c, b]) => c + b)) }),
);
const WS_PROTOCOLS = ['v5.channel.k8s.io', 'v4.channel.k8s.io', 'v4.base64.channel.k8s.io', 'base64.channel.k8s.io', 'channel.k8s.io', 'portforward.k8s.io'];

async function wsCase(ops: WsOp[], protocol: string, portforward: boolean): Promise<void> {
  const url = portforward
    ? ctx.server.getPortForward({ pod_sandbox_id: 'pod1', port: [1] }).url
    : ctx.server.getExec({ container_id: 'c1', cmd: ['cat'], stdin: true, stdout: true, tty: protocol.startsWith('v5') }).url;
  const ws = new WebSocket(url.replace(/^http/, 'ws'), [protocol]);
  ws.on('error', () => undefined);
  const closed = new Promise<void>((r) => ws.once('close', () => r()));
  const opened = await new Promise<boolean>((r) => {
    ws.once('open', () => r(true));
    ws.once('close', () => r(false));
  });
  if (opened) {
    for (const o of ops) {
      if (ws.readyState !== ws.OPEN) break;
      if ('text' in o) ws.send(o.text, { binary: false });
      else ws.send(Buffer.from(o.bytes), { binary: true });
    }
    await new Promise((r) => setTimeout(r, 5));
    ws.terminate();
  }
  await closed;
}

test('random SPDY frames and WebSocket messages: the server survives, serves after, RSS bounded', async () => {
  const { growth } = await measurePeak('streaming frame fuzz', 'self', async () => {
    await fc.assert(fc.asyncProperty(fc.array(spdyOp, { maxLength: 16 }), fc.boolean(), spdyCase), fuzzParams('SPDY frames', 250, 12_000));
    await fc.assert(fc.asyncProperty(fc.array(wsOp, { maxLength: 16 }), fc.constantFrom(...WS_PROTOCOLS), fc.boolean(), wsCase), fuzzParams('WebSocket messages', 250, 12_000));
  });
  expect(growth).toBeLessThan(96 * MiB);
  const r = await spdyExec(ctx.server.getExec({ container_id: 'c1', cmd: ['echo', 'alive'], stdout: true }).url, {});
  expect(r.stdout).toBe('alive\n');
  // every fuzzed session has ended (the server tracks live ones)
  await new Promise((r) => setTimeout(r, 1500));
  expect((ctx.server as any).live.size).toBe(0);
});

test('control frames of every type with short bodies end the session cleanly', async () => {
  for (const type of Object.values(FrameType)) {
    for (const len of [0, 3]) {
      const c = await rawSpdyConnect(ctx.server.getExec({ container_id: 'c1', cmd: ['true'], stdout: true }).url, 'v4.channel.k8s.io');
      c.socket.write(controlFrame(type, 0, Buffer.alloc(len)));
      const done = await Promise.race([c.closed.then(() => 'closed'), new Promise((r) => setTimeout(() => r('open'), 300))]);
      c.socket.destroy();
      // a body too short to hold what the type needs is a protocol error (GOAWAY), never a crash
      if (done === 'closed' && c.frames.length) expect(c.frames.at(-1)!.type).toBe(FrameType.GOAWAY);
    }
  }
  expect((await spdyExec(ctx.server.getExec({ container_id: 'c1', cmd: ['echo', 'ok'], stdout: true }).url, {})).stdout).toBe('ok\n');
});
