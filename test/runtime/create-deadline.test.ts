// CreateContainer's deadline is the caller's (kubelet's runtimeRequestTimeout), not a fixed agent
// timeout: the server hands each unary handler the call's gRPC deadline, and a pod VM's create
// that outlives it is abandoned by the host and undone in the guest when the guest completes it
// later (no host record names it; kubelet retries with a fresh id). A fake guest on a real unix
// socket answers late, a real AgentClient and VmPod talk to it; the e2e (e2e/runtime.test.ts)
// does the same against a real guest.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { loadCri } from '../../cri-api';
import { AgentClient } from '../../src/agent/client';
import { encodeJson, Kind } from '../../src/agent/protocol';
import { VmPod } from '../../src/runtime/backends/vm/vm-pod';
import type { CallContext } from '../../src/server';
import { startServer } from '../../src/server';
import { hasCode } from '../../src/util/errors';
import { silentLogger } from '../../src/util/log';

jest.setTimeout(30_000);

let dir: string;
beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-create-deadline-'))));
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('the gRPC deadline reaches the handler', () => {
  let server: grpc.Server;
  let client: any;
  const seen: CallContext[] = [];
  beforeEach(async () => {
    const socket = path.join(dir, 'cri.sock');
    server = await startServer(socket, {
      async CreateContainer(_req: never, call: CallContext) {
        seen.push(call);
        return { container_id: 'c' };
      },
    }, {}, silentLogger);
    client = new (loadCri().RuntimeServiceClient)(`unix://${socket}`, grpc.credentials.createInsecure());
  });
  afterEach(async () => {
    client.close();
    await new Promise<void>((r) => server.tryShutdown(() => r()));
  });
  const create = (opts: grpc.CallOptions) => new Promise((resolve, reject) => client.CreateContainer({ pod_sandbox_id: 'p' }, opts, (err: Error | null, res: unknown) => (err ? reject(err) : resolve(res))));

  test('as ms since the epoch when the caller set one, absent when not', async () => {
    seen.length = 0;
    const deadline = Date.now() + 240_000; // kubelet's runtimeRequestTimeout in the cluster e2e
    await create({ deadline });
    await create({});
    expect(seen).toHaveLength(2);
    // grpc sends the time left (grpc-timeout); the server adds it to its clock
    expect(Math.abs(seen[0].deadline! - deadline)).toBeLessThan(1000);
    expect(seen[1].deadline).toBeUndefined();
  });
});

/** The host's frames to the guest (requests), decoded as the guest does. */
function requests(onReq: (id: number, method: string, params: any) => void): (chunk: Buffer) => void {
  let buf = Buffer.alloc(0);
  return (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
      const len = buf.readUInt32BE(0);
      const kind = buf[4];
      const id = buf.readUInt32BE(5);
      const payload = buf.subarray(9, 4 + len);
      buf = buf.subarray(4 + len);
      if (kind === Kind.Req) {
        const req = JSON.parse(payload.toString());
        onReq(id, req.method, req.params);
      }
    }
  };
}

/** A guest whose container.create answers after `createMs` (with `createError`, if set). */
async function pod(createMs: number, createError?: { code: string; message: string }) {
  const sock = path.join(dir, 'agent.sock');
  const calls: Array<{ method: string; id?: string; at: number }> = [];
  const answered: Array<{ method: string; at: number }> = [];
  const conns: net.Socket[] = [];
  const server = net.createServer((s) => {
    conns.push(s);
    s.on('error', () => undefined);
    s.on('data', requests((rid, method, params) => {
      calls.push({ method, id: params?.id, at: Date.now() });
      const answer = (body: object) => {
        answered.push({ method, at: Date.now() });
        if (!s.destroyed) s.write(encodeJson(Kind.Resp, rid, body));
      };
      if (method === 'hello') answer({ result: { nonce: params.nonce, protocol: 1, agent_version: 't', boot_id: 'b' } });
      else if (method === 'container.create') setTimeout(() => answer(createError ? { error: createError } : { result: { pid: 7 } }), createMs);
      else answer({ result: {} });
    }));
  });
  await new Promise<void>((r) => server.listen(sock, () => r()));
  const vm = {
    info: { id: 'p1', pid: -1, agentSocket: sock },
    exited: new Promise<void>(() => undefined),
    stop: async () => undefined,
    alive: () => true,
    connectAgent: (timeoutMs: number) => AgentClient.connect(sock, timeoutMs),
  } as never;
  const p = new VmPod(vm, dir, silentLogger, 'p1');
  await p.connect('host', 5000);
  const close = async () => {
    p.agent.close();
    conns.forEach((c) => c.destroy());
    await new Promise<void>((r) => server.close(() => r()));
  };
  return { pod: p, calls, answered, close };
}

const params = (id: string) => ({ id, rootfs: { image: '/i', readonly: false }, spec: {}, username: null, stdio: { stdin: 0, stdout: 1, stderr: 0, tty: false, stdin_once: false } });
const settle = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('a pod VM create that outlives its deadline', () => {
  test('fails with deadline_exceeded at the deadline; the guest\'s late success is deleted in the guest', async () => {
    const g = await pod(800);
    const t0 = Date.now();
    const err = await g.pod.createContainer(params('late'), 200).catch((e: unknown) => e);
    const waited = Date.now() - t0;
    expect(hasCode(err, 'deadline_exceeded')).toBe(true);
    expect(waited).toBeGreaterThanOrEqual(190);
    expect(waited).toBeLessThan(700); // not the guest's 800 ms
    expect(g.calls.map((c) => c.method)).not.toContain('container.delete');
    await settle(1200);
    const del = g.calls.filter((c) => c.method === 'container.delete');
    expect(del.map((c) => c.id)).toEqual(['late']);
    // deleted only once the guest had answered the create (a delete before it would miss it)
    expect(del[0].at).toBeGreaterThanOrEqual(g.answered.find((a) => a.method === 'container.create')!.at);
    await g.close();
  });

  test('a create within the deadline is kept', async () => {
    const g = await pod(50);
    await g.pod.createContainer(params('quick'), 2000);
    await settle(300);
    expect(g.calls.map((c) => c.method)).toEqual(['hello', 'container.create']);
    await g.close();
  });

  test('a late create that fails in the guest leaves nothing to delete', async () => {
    const g = await pod(400, { code: 'internal', message: 'no rootfs' });
    const err = await g.pod.createContainer(params('failed'), 100).catch((e: unknown) => e);
    expect(hasCode(err, 'deadline_exceeded')).toBe(true);
    await settle(800);
    expect(g.calls.map((c) => c.method)).toEqual(['hello', 'container.create']);
    await g.close();
  });
});

describe("a CreateContainer's volume mounts in the guest", () => {
  // a shorter host bound than the caller's abandoned slow NFS mounts (guest modules loading
  // under load) that then raced kubelet's retry on the same mount point (ENOENT)
  const nfs = { kind: 'nfs', nfs: { server: '10.0.0.1', export: '/export', version: '4.1' }, mountOptions: [], readOnly: false } as never;
  const target = () => {
    const waits: number[] = [];
    return { waits, t: { mountNfs: async (_p: unknown, timeoutMs: number) => void waits.push(timeoutMs), mountDisk: async (_p: unknown, timeoutMs: number) => void waits.push(timeoutMs) } as never };
  };

  test('are bounded by the time the caller still waits, or by the driver\'s own bound without one', async () => {
    const { NfsDriver } = await import('../../storage/drivers/nfs');
    const { guestMountDisk, MOUNT_TIMEOUT_MS } = await import('../../storage/drivers/block-steps');
    const a = target();
    await new NfsDriver().attach(a.t, nfs, { readonly: false, guestPath: '/run/podvisor/volumes/x', tag: 'x', timeoutMs: 239_000 });
    await new NfsDriver().attach(a.t, nfs, { readonly: false, guestPath: '/run/podvisor/volumes/y', tag: 'y' });
    const disk = { fsType: 'ext4', mountOptions: [], format: false };
    await guestMountDisk(a.t, { scsiId: 1, lun: 0 }, disk, { readonly: false, guestPath: '/run/podvisor/volumes/z', tag: 'z', timeoutMs: 200_000 });
    await guestMountDisk(a.t, { scsiId: 1, lun: 1 }, disk, { readonly: false, guestPath: '/run/podvisor/volumes/w', tag: 'w' });
    expect(a.waits).toEqual([239_000, 40_000, 200_000, MOUNT_TIMEOUT_MS]);
  });
});
