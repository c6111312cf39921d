// The server-streaming plumbing of src/server.ts and the Stream* list variants, over a real
// grpc-js unix socket: batching, filters passed through, errors and UNIMPLEMENTED as statuses.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { loadCri } from '../cri-api';
import { invalidArgument } from '../src/util/errors';
import { BATCH_ITEMS, batches } from '../src/cri/list-streams';
import { startServer } from '../src/server';

function read(call: any): Promise<any[]> {
  return new Promise((resolve, reject) => {
    const msgs: any[] = [];
    call.on('data', (m: any) => msgs.push(m));
    call.on('end', () => resolve(msgs));
    call.on('error', reject);
  });
}

describe('batches', () => {
  it('keeps every item in order, cutting at the item count or the byte size', () => {
    const items = Array.from({ length: 1201 }, (_, i) => ({ i }));
    const b = batches(items);
    expect(b.map((x) => x.length)).toEqual([BATCH_ITEMS, BATCH_ITEMS, 201]);
    expect(b.flat()).toEqual(items);
    const big = Array.from({ length: 5 }, (_, i) => ({ i, pad: 'x'.repeat(400) }));
    expect(batches(big, 100, 1000).map((x) => x.length)).toEqual([3, 2]);
    expect(batches([])).toEqual([]);
  });
});

describe('streams over a real socket', () => {
  let dir: string;
  let server: grpc.Server;
  let runtime: any;
  let image: any;
  const seen: any[] = [];

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'podvisor-streams-'));
    const socket = path.join(dir, 'cri.sock');
    const pods = Array.from({ length: 1100 }, (_, i) => ({ id: `pod-${String(i).padStart(4, '0')}`, metadata: { name: `p${i}`, uid: `u${i}`, namespace: 'default', attempt: 0 }, state: 'SANDBOX_READY', created_at: String(i), labels: {}, annotations: {}, runtime_handler: '' }));
    server = await startServer(
      socket,
      {
        async ListPodSandbox(req: any) {
          seen.push(req);
          if (req.filter?.id === 'bad') throw invalidArgument('bad filter');
          return { items: req.filter?.id ? pods.filter((p) => p.id === req.filter.id) : pods };
        },
      },
      { async ListImages() { return { images: [] }; } },
      pino({ level: 'silent' }),
      {
        async GetContainerEvents(_req, sink) {
          await sink.write({ container_id: 'c1', container_event_type: 'CONTAINER_STARTED_EVENT', created_at: '5', containers_statuses: [] });
          await sink.gone; // a real event stream only ends when the client goes
        },
      },
    );
    const cri = loadCri();
    runtime = new cri.RuntimeServiceClient(`unix://${socket}`, grpc.credentials.createInsecure());
    image = new cri.ImageServiceClient(`unix://${socket}`, grpc.credentials.createInsecure());
  });

  afterAll(async () => {
    runtime?.close();
    image?.close();
    if (server) await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('sends a List answer in batches, in order, with the filter passed on', async () => {
    const msgs = await read(runtime.StreamPodSandboxes({}));
    expect(msgs.map((m) => m.pod_sandboxes.length)).toEqual([BATCH_ITEMS, BATCH_ITEMS, 100]);
    const all = msgs.flatMap((m) => m.pod_sandboxes);
    expect(all.map((p: any) => p.id)).toEqual(Array.from({ length: 1100 }, (_, i) => `pod-${String(i).padStart(4, '0')}`));
    expect(all[7]).toMatchObject({ metadata: { name: 'p7', uid: 'u7' }, state: 'SANDBOX_READY' });
    const one = await read(runtime.StreamPodSandboxes({ filter: { id: 'pod-0042' } }));
    expect(one.flatMap((m) => m.pod_sandboxes).map((p: any) => p.id)).toEqual(['pod-0042']);
    expect(seen.at(-1).filter.id).toBe('pod-0042');
    expect(await read(image.StreamImages({}))).toEqual([]);
  });

  it("ends the stream with the List call's error status", async () => {
    await expect(read(runtime.StreamPodSandboxes({ filter: { id: 'bad' } }))).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT, details: 'bad filter' });
  });

  it('answers UNIMPLEMENTED for a stream without a List or handler behind it', async () => {
    await expect(read(runtime.StreamContainers({}))).rejects.toMatchObject({ code: grpc.status.UNIMPLEMENTED });
    await expect(read(runtime.StreamPodSandboxMetrics({}))).rejects.toMatchObject({ code: grpc.status.UNIMPLEMENTED });
  });

  it('keeps an open-ended stream until the client cancels it', async () => {
    const call = runtime.GetContainerEvents({});
    const first = await new Promise<any>((resolve) => call.once('data', resolve));
    expect(first).toMatchObject({ container_id: 'c1', container_event_type: 'CONTAINER_STARTED_EVENT', created_at: '5' });
    const ended = new Promise<any>((resolve) => call.on('error', resolve));
    call.cancel();
    expect((await ended).code).toBe(grpc.status.CANCELLED);
  });
});
