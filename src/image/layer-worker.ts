// The worker thread of layer-pool.ts: reads layers (unpack.ts readLayerStream) from chunks
// the main thread sends, or from a blob it downloads itself (layer-fetch.ts), writes their
// file data to the image through its descriptor, and sends back the entries. Several layers
// can be read at once (each is its own job).
import { createHash, type Hash } from 'node:crypto';
import { parentPort } from 'node:worker_threads';
import { BlockCounter, ImageFile, Stager } from './erofs';
import type { FromWorker, ToWorker } from './layer-pool';
import type { HttpResponse } from './http';
import { openBlob, streamBlob, type FetchOutcome } from './layer-fetch';
import { readLayerStream, SharedBudget } from './unpack';

/** Bytes of a download queued for its reader before the download waits. */
const LOCAL_WINDOW = 8 << 20;
/** Download progress is reported to the main thread every 1/20 of the blob, at most 4 MiB (it logs each 10%). */
const progressStep = (size: number) => Math.min(4 << 20, Math.max(256 << 10, Math.ceil(size / 20)));

const port = parentPort!;

/** The chunks of one job, as an async iterable; taking a chunk acknowledges its bytes. */
class Inbox implements AsyncIterable<Buffer> {
  private q: Buffer[] = [];
  private queued = 0;
  private ended = false;
  private error: Error | undefined;
  private wake: (() => void) | undefined;
  private room: (() => void) | undefined;

  /** `local`: fed by this thread's own download (no acknowledgements to the main thread). */
  constructor(private readonly id: number, private readonly local = false) {}

  push(b: Buffer): void {
    this.q.push(b);
    this.queued += b.length;
    this.poke();
  }

  /** Queues a chunk of this thread's download; resolves when the reader has room again. */
  async feed(b: Buffer): Promise<void> {
    this.push(b);
    while (this.queued > LOCAL_WINDOW && !this.error) await new Promise<void>((r) => (this.room = r));
  }

  get failed(): boolean {
    return this.error !== undefined;
  }

  end(): void {
    this.ended = true;
    this.poke();
  }

  fail(e: Error): void {
    this.error ??= e;
    this.q = [];
    this.queued = 0;
    this.poke();
    this.unblock();
  }

  private poke(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  private unblock(): void {
    const r = this.room;
    this.room = undefined;
    r?.();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Buffer> {
    for (;;) {
      if (this.error) throw this.error;
      const b = this.q.shift();
      if (b) {
        this.queued -= b.length;
        if (this.local) {
          if (this.queued <= LOCAL_WINDOW) this.unblock();
        } else {
          post({ t: 'ack', id: this.id, bytes: b.length });
        }
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

/** Jobs that download their blob here: stopped when the build fails elsewhere. */
const downloads = new Map<number, { stop: AbortController; readerFailed: boolean }>();

async function run(m: Extract<ToWorker, { t: 'start' }>): Promise<void> {
  const stop = new AbortController();
  let res: HttpResponse | undefined;
  if (m.fetch) {
    downloads.set(m.id, { stop, readerFailed: false });
    const opened = await openBlob(m.fetch, stop.signal);
    if (!('body' in opened) || stop.signal.aborted) {
      downloads.delete(m.id);
      if ('body' in opened) opened.body.destroy();
      // Aborted meanwhile (the build failed elsewhere), or nothing was read: then the main
      // thread fetches it the usual way.
      const outcome: FetchOutcome = stop.signal.aborted ? { ok: false, fallback: false, code: 'CANCELLED', message: 'pull aborted' } : (opened as FetchOutcome);
      post({ t: 'fetched', id: m.id, outcome });
      post({ t: 'error', id: m.id, name: stop.signal.aborted ? 'BuildFailedError' : 'FetchFallbackError', message: outcome.ok ? '' : outcome.message });
      return;
    }
    res = opened;
  }
  const inbox = new Inbox(m.id, !!m.fetch);
  inboxes.set(m.id, inbox);
  if (m.hashInput) inputHashes.set(m.id, createHash('sha256'));
  const file = new ImageFile(m.fd, new BlockCounter(m.cells));
  let downloading: Promise<FetchOutcome> | undefined;
  if (m.fetch && res) {
    const blob = m.fetch;
    let reported = 0;
    const step = progressStep(blob.size);
    downloading = streamBlob(blob, res, (c) => inbox.feed(c), () => !inbox.failed, stop.signal, (n) => {
      if (n - reported >= step || n === blob.size) {
        reported = n;
        post({ t: 'progress', id: m.id, bytes: n });
      }
    }).then((o) => {
      if (o.ok) inbox.end();
      else inbox.fail(new Error(o.message));
      return o;
    });
  }
  let result: Extract<FromWorker, { t: 'done' }>['result'] | undefined;
  let error: any;
  try {
    const budget = new SharedBudget(m.cells, m.limits);
    const check = () => {
      if (budget.failed) throw new BuildFailed();
    };
    result = await readLayerStream(inbox, m.diffId, m.label, budget, new Stager(file), check).finally(() => file.drain(0).catch(() => undefined));
    // Raw PAX xattrs are not needed any more (the checked ones are in op.xattrs / the file).
    for (const op of result.ops) op.h.xattrs = null;
  } catch (e: any) {
    error = e;
    inbox.fail(e);
    const d = downloads.get(m.id);
    // Its own bytes refused: the download goes on, so that the main thread can tell a
    // corrupted transfer (digest mismatch) from what the registry really serves.
    if (d) d.readerFailed = true;
    if (e?.name === 'BuildFailedError') stop.abort();
  } finally {
    inboxes.delete(m.id);
    inputHashes.delete(m.id);
  }
  if (downloading) {
    post({ t: 'fetched', id: m.id, outcome: await downloading });
    downloads.delete(m.id);
  }
  if (error === undefined) post({ t: 'done', id: m.id, result: result! });
  else post({ t: 'error', id: m.id, name: String(error?.name ?? 'Error'), message: String(error?.message ?? error), ...(typeof error?.code === 'string' ? { code: error.code } : {}) });
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
    case 'abort': {
      inboxes.get(m.id)?.fail(Object.assign(new Error(m.message), { name: 'BuildFailedError' }));
      const d = downloads.get(m.id);
      if (d && (!d.readerFailed || m.cancel)) d.stop.abort();
      return;
    }
  }
});
post({ t: 'ready' });
