// GetContainerEvents over a real grpc-js socket (src/cri/events.ts): events in order with the
// statuses of the moment, the subscription dropped when the client goes, and a client that lets
// events pile up cut off with RESOURCE_EXHAUSTED instead of being buffered without bound. The
// container and sandbox managers are stand-ins that only emit and answer lists: the lifecycle
// behind real events is covered end to end in e2e/runtime.test.ts.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { loadCri } from '../cri-api';
import { eventHandlers, MAX_QUEUED_EVENTS } from '../src/cri/events';
import type { ContainerEvent } from '../src/runtime/containers';
import { startServer } from '../src/server';

const listeners = new Set<(ev: ContainerEvent) => void>();
const state = { value: 'CONTAINER_CREATED' };
const containers: any = {
  subscribe(fn: (ev: ContainerEvent) => void) {
    listeners.add(fn);
    return () => listeners.delete(fn);
  },
  list: () => [{ id: 'c1', sandboxId: 'p1', config: { metadata: { name: 'app', attempt: 0 } }, state: state.value, createdAt: '1', imageId: 'sha256:x', imageRef: 'sha256:x', streams: {} }],
};
const sandboxes: any = {
  find: (id: string) => (id === 'p1' ? { rec: { id: 'p1', config: { metadata: { name: 'pod', namespace: 'ns', uid: 'u', attempt: 0 } }, state: 'SANDBOX_READY', createdAt: '1', network: null } } : undefined),
};
const images: any = { resolve: () => undefined };
const stopping = new AbortController();
const emit = (type: ContainerEvent['type'], at: bigint) => {
  for (const fn of listeners) fn({ type, containerId: 'c1', sandboxId: 'p1', at });
};

describe('GetContainerEvents', () => {
  let dir: string;
  let server: grpc.Server;
  let client: any;

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'podvisor-events-'));
    const socket = path.join(dir, 'cri.sock');
    server = await startServer(socket, {}, {}, pino({ level: 'silent' }), eventHandlers(containers, sandboxes, images, stopping.signal));
    client = new (loadCri().RuntimeServiceClient)(`unix://${socket}`, grpc.credentials.createInsecure());
  });

  afterAll(async () => {
    client?.close();
    if (server) await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const until = async (cond: () => boolean) => {
    for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
    expect(cond()).toBe(true);
  };

  it('sends each event in order with the statuses taken when it happened, and unsubscribes when the client goes', async () => {
    const call = client.GetContainerEvents({});
    const got: any[] = [];
    call.on('data', (m: any) => got.push(m));
    const ended = new Promise<any>((resolve) => call.on('error', resolve));
    await until(() => listeners.size === 1);
    emit('CONTAINER_CREATED_EVENT', 10n);
    state.value = 'CONTAINER_RUNNING';
    emit('CONTAINER_STARTED_EVENT', 20n);
    state.value = 'CONTAINER_EXITED';
    await until(() => got.length === 2);
    expect(got.map((m) => [m.container_event_type, m.created_at, m.containers_statuses[0].state])).toEqual([
      ['CONTAINER_CREATED_EVENT', '10', 'CONTAINER_CREATED'],
      ['CONTAINER_STARTED_EVENT', '20', 'CONTAINER_RUNNING'],
    ]);
    expect(got[0].pod_sandbox_status).toMatchObject({ id: 'p1', state: 'SANDBOX_READY', metadata: { name: 'pod' } });
    call.cancel();
    expect((await ended).code).toBe(grpc.status.CANCELLED);
    await until(() => listeners.size === 0);
  });

  it('cuts off a client that lets events pile up', async () => {
    const call = client.GetContainerEvents({});
    call.pause();
    let received = 0;
    call.on('data', () => received++);
    const ended = new Promise<any>((resolve) => call.on('error', resolve));
    await until(() => listeners.size === 1);
    const total = MAX_QUEUED_EVENTS * 8;
    // in bursts, so that the transport's buffers fill and the queue behind them grows
    for (let i = 0; i < total; i++) {
      emit('CONTAINER_STARTED_EVENT', BigInt(i));
      if (i % 256 === 255) await new Promise((r) => setImmediate(r));
    }
    call.resume();
    const err = await ended;
    expect(err.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(err.details).toMatch(/reconnect/);
    expect(received).toBeLessThan(total);
    await until(() => listeners.size === 0);
  });

  it('ends every stream with UNAVAILABLE when the daemon stops, so that shutdown does not wait on them', async () => {
    const calls = [client.GetContainerEvents({}), client.GetContainerEvents({})];
    const ended = calls.map((c) => new Promise<any>((resolve) => { c.on('data', () => undefined); c.on('error', resolve); }));
    await until(() => listeners.size === 2);
    stopping.abort();
    for (const e of await Promise.all(ended)) expect(e).toMatchObject({ code: grpc.status.UNAVAILABLE, details: expect.stringMatching(/stopping/) });
    await until(() => listeners.size === 0);
  });
});
