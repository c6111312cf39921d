// A hostile or broken guest agent against the host side of a pod (issue 17 items 4 and 6, and
// ExecSync's I/O): a fake guest on a real unix socket speaks the agent protocol to a real
// AgentClient, PodVm and ContainerManager. It floods 5000 duplicate `exit` events (one durable
// write, one log line; the flood fails the pod: connection closed, VM stopped), answers an
// ExecSync with output and an exit but never ends its streams (the call still returns, with the
// output), and sends a 100 KB agent_version in its hello (kept at 128 characters).
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { encodeFrame, encodeJson, Kind } from '../src/agent/protocol';
import { AgentClient } from '../src/agent/client';
import { ContainerManager, EXEC_IO_DRAIN_MS } from '../src/runtime/containers';
import { MAX_HELLO_FIELD } from '../src/agent/hello';
import { MAX_GUEST_EVENTS_PER_S, VmPod as PodVm } from '../src/runtime/backends/vm/vm-pod';

jest.setTimeout(60_000);

let dir: string;
beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'podvisor-guest-events-'))));
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

type Handler = (method: string, params: any, send: (b: Buffer) => void) => unknown;

/** A guest agent that answers requests with `handle` (undefined: a result of {}). */
async function fakeGuest(sock: string, handle: Handler): Promise<{ send(b: Buffer): void; close(): Promise<void> }> {
  const conns: net.Socket[] = [];
  const server = net.createServer((s) => {
    conns.push(s);
    s.on('error', () => undefined);
    const dec = new FrameDecoderFromHost();
    s.on('data', (chunk: Buffer) => {
      for (const f of dec.push(chunk)) {
        const req = JSON.parse(f.payload.toString());
        const result = handle(req.method, req.params, (b) => s.write(b));
        s.write(encodeJson(Kind.Resp, f.id, { result: result ?? {} }));
      }
    });
  });
  await new Promise<void>((r) => server.listen(sock, () => r()));
  return {
    send: (b) => conns.forEach((c) => c.write(b)),
    close: async () => {
      conns.forEach((c) => c.destroy());
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** The host's frames: requests (FrameDecoder refuses Req, as a host must; here we are the guest). */
class FrameDecoderFromHost {
  private buf = Buffer.alloc(0);
  push(chunk: Buffer): Array<{ kind: number; id: number; payload: Buffer }> {
    this.buf = Buffer.concat([this.buf, chunk]);
    const out = [];
    while (this.buf.length >= 4 && this.buf.length >= 4 + this.buf.readUInt32BE(0)) {
      const len = this.buf.readUInt32BE(0);
      const kind = this.buf[4];
      const id = this.buf.readUInt32BE(5);
      const payload = this.buf.subarray(9, 4 + len);
      this.buf = this.buf.subarray(4 + len);
      if (kind === Kind.Req) out.push({ kind, id, payload });
    }
    return out;
  }
}

function fakeVm(agentSocket: string) {
  return { info: { id: 'p1', pid: -1, agentSocket }, connectAgent: (t: number) => AgentClient.connect(agentSocket, t), exited: new Promise<void>(() => undefined), stop: jest.fn(async () => undefined), alive: () => true } as any;
}

function captureLogger() {
  const lines: any[] = [];
  const logger = pino({ level: 'debug' }, new Writable({ write: (c, _e, cb) => (lines.push(JSON.parse(String(c))), cb()) }));
  return { logger, lines };
}

async function setUp(handle: Handler) {
  const sock = path.join(dir, 'agent.sock');
  const guest = await fakeGuest(sock, (method, params, send) => {
    if (method === 'hello') return { nonce: params.nonce, protocol: 1, agent_version: 'v'.repeat(100_000), boot_id: 'b' };
    return handle(method, params, send);
  });
  const { logger, lines } = captureLogger();
  const vm = fakeVm(sock);
  const pod = new PodVm(vm, dir, logger, 'p1');
  const sandboxes: any = { find: () => ({ pod, rec: { state: 'SANDBOX_READY' } }) };
  const cm = new ContainerManager(dir, sandboxes, {} as any, {} as any, logger);
  pod.onEvent((ev: any) => sandboxes.hooks.onEvent('p1', ev));
  const hello = await pod.connect('host', 5000);
  cm.containers.set('c1', { rec: { id: 'c1', sandboxId: 'p1', state: 'CONTAINER_RUNNING', metadata: { name: 'c1' } } as any, exitWaiters: [] });
  return { guest, pod, cm, vm, lines, hello };
}

test('a 100 KB agent_version in hello is kept at 128 characters', async () => {
  const { guest, pod, hello } = await setUp(() => undefined);
  expect(hello.agent_version).toHaveLength(MAX_HELLO_FIELD);
  pod.agent.close();
  await guest.close();
});

test('5000 duplicate exit events: one durable write and one log line; the flood fails the pod', async () => {
  const { guest, pod, cm, vm, lines } = await setUp(() => undefined);
  const saves = jest.spyOn((cm as any).store, 'save');
  const exit = encodeJson(Kind.Event, 0, { type: 'exit', container_id: 'c1', exit_code: 3 });
  const t0 = Date.now();
  guest.send(Buffer.concat(Array.from({ length: 5000 }, () => exit)));
  const deadline = Date.now() + 10_000;
  while (!pod.agent.closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  await new Promise((r) => setTimeout(r, 200));
  console.log(`5000 duplicate exits: ${saves.mock.calls.length} record write(s), ${lines.filter((l) => l.msg === 'container exited').length} log line(s), pod failed after ${Date.now() - t0} ms`);
  expect(cm.containers.get('c1')!.rec.state).toBe('CONTAINER_EXITED');
  expect(cm.containers.get('c1')!.rec.exitCode).toBe(3);
  expect(saves).toHaveBeenCalledTimes(1);
  expect(lines.filter((l) => l.msg === 'container exited')).toHaveLength(1);
  expect(lines.filter((l) => /guest event flood/.test(l.msg))).toHaveLength(1);
  expect(pod.agent.closed).toBe(true);
  expect(vm.stop).toHaveBeenCalledTimes(1);
  await guest.close();
});

test(`events within ${MAX_GUEST_EVENTS_PER_S}/s pass and do not fail the pod`, async () => {
  const { guest, pod, cm, vm } = await setUp(() => undefined);
  for (let i = 0; i < 5; i++) {
    cm.containers.set(`k${i}`, { rec: { id: `k${i}`, sandboxId: 'p1', state: 'CONTAINER_RUNNING', metadata: { name: `k${i}` } } as any, exitWaiters: [] });
    guest.send(encodeJson(Kind.Event, 0, { type: 'exit', container_id: `k${i}`, exit_code: 0 }));
  }
  const deadline = Date.now() + 5000;
  while (cm.containers.get('k4')!.rec.state !== 'CONTAINER_EXITED' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  expect([0, 1, 2, 3, 4].map((i) => cm.containers.get(`k${i}`)!.rec.state)).toEqual(Array(5).fill('CONTAINER_EXITED'));
  expect(pod.agent.closed).toBe(false);
  expect(vm.stop).not.toHaveBeenCalled();
  pod.agent.close();
  await guest.close();
});

test('ExecSync: a guest that exits but never ends the output streams cannot hold the call', async () => {
  const { guest, pod, cm, lines } = await setUp((method, params, send) => {
    if (method !== 'exec.start') return undefined;
    // output on stdout, then the exit; never an EOF on either stream
    setTimeout(() => {
      send(encodeFrame(Kind.Data, params.stdout, Buffer.from('partial output')));
      send(encodeJson(Kind.Event, 0, { type: 'exit', exec_id: params.exec_id, exit_code: 0 }));
    }, 20);
    return undefined;
  });
  const t0 = Date.now();
  const r = await cm.execSync('c1', ['x'], 0);
  const ms = Date.now() - t0;
  console.log(`ExecSync without EOF returned after ${ms} ms`);
  expect(r.stdout.toString()).toBe('partial output');
  expect(r.exitCode).toBe(0);
  expect(ms).toBeLessThan(EXEC_IO_DRAIN_MS + 2000);
  expect(lines.some((l) => /did not end after the exit/.test(l.msg))).toBe(true);
  pod.agent.close();
  await guest.close();
});
