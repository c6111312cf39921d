// The worker thread of layer-pool.ts: reads layers (unpack.ts readLayerStream) from chunks
// the main thread sends, writes their file data to the image through its descriptor, and
// sends back the entries. Several layers can be read at once (each is its own job).
import { createHash, type Hash } from 'node:crypto';
import { parentPort } from 'node:worker_threads';
import { BlockCounter, ImageFile, Stager } from './erofs';
import type { FromWorker, ToWorker } from './layer-pool';
import { readLayerStream, SharedBudget } from './unpack';

const port = parentPort!;

/** The chunks of one job, as an async iterable; taking a chunk acknowledges its bytes. */
class Inbox implements AsyncIterable<Buffer> {
  private q: Buffer[] = [];
  private ended = false;
  private error: Error | undefined;
  private wake: (() => void) | undefined;

  constructor(private readonly id: number) {}

  push(b: Buffer): void {
    this.q.push(b);
    this.poke();
  }

  end(): void {
    this.ended = true;
    this.poke();
  }

  fail(e: Error): void {
    this.error ??= e;
    this.q = [];
    this.poke();
  }

  private poke(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Buffer> {
    for (;;) {
      if (this.error) throw this.error;
      const b = this.q.shift();
      if (b) {
        post({ t: 'ack', id: this.id, bytes: b.length });
        yield b;
        continue;
      }
      if (this.ended) return;
      await new Promise<void>((r) => (this.wake = r));
    }
  }
}

function post(m: FromWorker): void {
  port.postMessage(m);
}

class BuildFailed extends Error {
  constructor() {
    super('image build failed');
    this.name = 'BuildFailedError';
  }
}

const inboxes = new Map<number, Inbox>();
/** Jobs whose raw input (the compressed blob) is hashed as it arrives, for the blob's digest. */
const inputHashes = new Map<number, Hash>();

function received(id: number, b: Buffer): void {
  inputHashes.get(id)?.update(b);
  inboxes.get(id)?.push(b);
}

async function run(m: Extract<ToWorker, { t: 'start' }>): Promise<void> {
  const inbox = new Inbox(m.id);
  inboxes.set(m.id, inbox);
  if (m.hashInput) inputHashes.set(m.id, createHash('sha256'));
  const file = new ImageFile(m.fd, new BlockCounter(m.cells));
  try {
    const budget = new SharedBudget(m.cells, m.limits);
    const check = () => {
      if (budget.failed) throw new BuildFailed();
    };
    const result = await readLayerStream(inbox, m.diffId, m.label, budget, new Stager(file), check).finally(() => file.drain(0).catch(() => undefined));
    // Raw PAX xattrs are not needed any more (the checked ones are in op.xattrs / the file).
    for (const op of result.ops) op.h.xattrs = null;
    post({ t: 'done', id: m.id, result });
  } catch (e: any) {
    post({ t: 'error', id: m.id, name: String(e?.name ?? 'Error'), message: String(e?.message ?? e), ...(typeof e?.code === 'string' ? { code: e.code } : {}) });
  } finally {
    inboxes.delete(m.id);
    inputHashes.delete(m.id);
  }
}

port.on('message', (m: ToWorker) => {
  switch (m.t) {
    case 'start':
      void run(m);
      return;
    case 'data':
      received(m.id, Buffer.from(m.buf));
      return;
    case 'shared': {
      // Copied out at once, so that the main thread can reuse the slab.
      const b = Buffer.allocUnsafeSlow(m.len);
      b.set(new Uint8Array(m.sab, 0, m.len));
      post({ t: 'slab', sab: m.sab });
      received(m.id, b);
      return;
    }
    case 'end': {
      const h = inputHashes.get(m.id);
      if (h) {
        inputHashes.delete(m.id);
        post({ t: 'input', id: m.id, digest: `sha256:${h.digest('hex')}` });
      }
      inboxes.get(m.id)?.end();
      return;
    }
    case 'abort':
      inboxes.get(m.id)?.fail(Object.assign(new Error(m.message), { name: 'BuildFailedError' }));
      return;
  }
});
post({ t: 'ready' });
