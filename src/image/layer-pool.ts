// Layer readers on worker threads. Reading a layer is CPU work on every byte: gunzip output
// handling, the diff_id hash, tar parsing, queueing file data to the image. On the main
// thread it competed with the download it was reading (the event loop was ~90% busy, the
// largest layer finished downloading late) and every buffer it allocated (~100 MB of inflated
// data per 100 MB image) triggered full garbage collections of the daemon's whole heap. A
// worker has a heap of a few MB, runs beside the main thread, and writes the file data to the
// image through the same descriptor (positioned writes to extents allocated from a shared
// counter, erofs.ts BlockCounter); the image-wide limits are shared counters too
// (unpack.ts SharedBudget). Only the entries of the layer (names, modes, xattrs, inline tails,
// extents) come back to the main thread, which replays layers in order as before.
//
// A layer whose blob is not stored yet is downloaded by the worker itself (layer-fetch.ts):
// then no byte of it crosses this thread. Otherwise (a stored blob, a fallback download)
// compressed chunks go to the worker as transferred ArrayBuffers (no copy) when the caller
// owns them (LayerOptions.owned), copied otherwise; the worker acknowledges what it has taken
// so that at most WINDOW bytes per layer are in flight (back pressure to the download).
//
// Workers are kept in a small pool (PODVISOR_LAYER_WORKERS, default: the CPU count, 1–4; 0
// reads layers on the main thread), started on first use or by prewarmLayerWorkers(), and
// stopped after IDLE_MS without work (also one started ahead that never got a job), then the
// freed C heap goes back to the kernel (util/malloc-trim.ts). IDLE_MS is 30 s: an idle worker
// is an isolate with its own heap, modules (undici) and arena, ~20 MB each before the garbage a
// pull leaves in it; with the start-up warm-up (warm-up.ts) two workers kept for 5 minutes held
// ~100 MB of an idle daemon's ~200 (bench/README issue 21: a 50-idle-pod daemon 203 → 99 MB,
// PSS per pod 53.5 → 51.3 MiB). The price: a pull more than 30 s after the last one starts new
// threads, ~0.3–1 s each to boot under load, whose code is not yet optimized (bench/pull
// --workers-idled); the pulls of one pod, or of a rollout, come within seconds of each other.
// Between jobs, once the whole pool has been quiet for TRIM_AFTER_MS, the freed C heap of the
// pull (zlib, chunk buffers: ~35 MB after the warm-up) is trimmed too.
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import v8 from 'node:v8';
import { Worker } from 'node:worker_threads';
import { FileNode } from './erofs';
import type { FetchOutcome, RemoteBlob } from './layer-fetch';
import type { LayerRead, Op, UnpackLimits } from './layer-types';
import { releaseFreedMemory } from '../util/malloc-trim';

const WINDOW = 8 << 20;
export const IDLE_MS = 30_000;
/** The pool's C heap is trimmed once no worker has had work for this long. */
const TRIM_AFTER_MS = 2000;
/** Input is packed into shared slabs of this size (one copy, no allocation per piece). */
const SLAB = 1 << 20;
/** Chunks at least this large that the caller owns are transferred instead. */
const TRANSFER_MIN = 256 << 10;
const MAX_FREE_SLABS = 16;

// Free slabs. Network chunks are small and short-lived: packing them into reused shared
// memory instead of fresh buffers keeps ~1 byte of garbage per downloaded byte away from the
// main thread's heap (each fresh buffer counts towards V8's next full collection).
const freeSlabs: SharedArrayBuffer[] = [];

function takeSlab(): SharedArrayBuffer {
  return freeSlabs.pop() ?? new SharedArrayBuffer(SLAB);
}

function returnSlab(sab: SharedArrayBuffer): void {
  if (freeSlabs.length < MAX_FREE_SLABS && sab.byteLength === SLAB) freeSlabs.push(sab);
}

/** Messages to a worker. */
export type ToWorker =
  | { t: 'start'; id: number; fd: number; cells: BigInt64Array; limits: UnpackLimits; diffId?: string; label: string; hashInput: boolean; fetch?: RemoteBlob }
  | { t: 'data'; id: number; buf: ArrayBuffer }
  /** `len` bytes at the start of a shared slab: the worker copies them out and acknowledges `slab`. */
  | { t: 'shared'; id: number; sab: SharedArrayBuffer; len: number }
  | { t: 'end'; id: number }
  /** `cancel`: the pull was cancelled: a download whose reader failed by itself stops too. */
  | { t: 'abort'; id: number; message: string; cancel?: boolean };

/** Messages from a worker. */
export type FromWorker =
  | { t: 'ready' }
  | { t: 'ack'; id: number; bytes: number }
  /** sha256 of every byte the job received, sent when its input ended (hashInput). */
  | { t: 'input'; id: number; digest: string }
  /** A slab copied out, free for reuse. */
  | { t: 'slab'; sab: SharedArrayBuffer }
  /** How the job's own download ended (fetch jobs), sent before 'done' or 'error'. */
  | { t: 'fetched'; id: number; outcome: FetchOutcome }
  | { t: 'progress'; id: number; bytes: number }
  | { t: 'done'; id: number; result: LayerRead }
  | { t: 'error'; id: number; name: string; message: string; code?: string };

function configuredSize(): number {
  const env = process.env.PODVISOR_LAYER_WORKERS;
  if (env !== undefined && env !== '' && /^\d+$/.test(env)) return Math.min(16, Number(env));
  const cpus = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
  return Math.max(1, Math.min(4, cpus));
}

/** Whether layers are read on worker threads (PODVISOR_LAYER_WORKERS is not 0). */
export function layerWorkersEnabled(): boolean {
  return configuredSize() > 0;
}

interface Job {
  /** Its share of the worker's load: the blob's size when known. */
  weight: number;
  inflight: number;
  settled: boolean;
  /** Resolves when the worker took some bytes, or the job settled. */
  wake: (() => void) | undefined;
  resolve: (r: LayerRead) => void;
  /** Called once: the input's digest, or undefined when the job ended without it. */
  onInput?: (digest: string | undefined) => void;
  onFetched?: (o: FetchOutcome) => void;
  onProgress?: (bytes: number) => void;
  reject: (e: Error) => void;
}

/** The worker's modules, transpiled once, when running from TypeScript sources. */
let transpiled: Record<string, string> | undefined;

/**
 * A worker's first full collection waits until its old generation holds this much. Layer
 * reading churns through ~1 byte of short-lived buffers per byte of image (network reads,
 * inflated chunks, file data queued for writing); with V8's default start (a limit just above
 * the worker's ~10 MB of code and modules) a worker ran a mark-compact every ~25 ms while
 * reading: ~18 a pull, a quarter of the pull's CPU. 64 MB cuts that to ~3 (bench/README).
 */
const WORKER_INITIAL_OLD_SPACE_MB = 64;
let heapFlagSet = false;

function spawnWorker(): Worker {
  if (!heapFlagSet) {
    // Read when an isolate is created, so it applies to isolates made from now on: only these
    // workers (the daemon's own isolate exists already). Worker resourceLimits has no such knob.
    v8.setFlagsFromString(`--initial-old-space-size=${WORKER_INITIAL_OLD_SPACE_MB}`);
    heapFlagSet = true;
  }
  const ext = path.extname(__filename);
  const file = path.join(__dirname, `layer-worker${ext}`);
  if (ext !== '.ts') return new Worker(file);
  // Running from TypeScript sources (tests, bench/*.sh): this thread transpiles the worker's
  // modules (layer-worker.ts and what it imports from the sources) and hands over the
  // JavaScript, so that the worker's heap does not carry a TypeScript compiler.
  if (!transpiled) {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const ts = require('typescript');
    const out: Record<string, string> = {};
    const add = (full: string) => {
      if (out[full] !== undefined) return;
      const js: string = ts.transpileModule(readFileSync(full, 'utf8'), {
        compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true },
        fileName: full,
      }).outputText;
      out[full] = js;
      // Its relative imports, recursively (the worker loads nothing else from the sources).
      for (const m of js.matchAll(/require\("(\.{1,2}\/[^"]+)"\)/g)) add(path.resolve(path.dirname(full), `${m[1]}.ts`));
    };
    add(file);
    transpiled = out;
  }
  const boot = `
    const { workerData } = require('node:worker_threads');
    require.extensions['.ts'] = (m, f) => {
      const js = workerData.sources[f];
      if (js === undefined) throw new Error('layer worker: no transpiled source for ' + f);
      m._compile(js, f);
    };
    require(workerData.main);`;
  return new Worker(boot, { eval: true, workerData: { sources: transpiled, main: file } });
}

class LayerWorker {
  readonly worker: Worker;
  readonly jobs = new Map<number, Job>();
  readonly ready: Promise<void>;
  /** Sum of the weights of its jobs (pick). */
  load = 0;
  private idle: NodeJS.Timeout | undefined;
  dead = false;

  constructor(private readonly onGone: (w: LayerWorker) => void) {
    this.worker = spawnWorker();
    let ready!: () => void;
    this.ready = new Promise((r) => (ready = r));
    this.worker.on('message', (m: FromWorker) => {
      if (m.t === 'ready') return ready();
      if (m.t === 'slab') return returnSlab(m.sab);
      const job = this.jobs.get(m.id);
      if (!job) return;
      if (m.t === 'input') {
        const f = job.onInput;
        job.onInput = undefined;
        f?.(m.digest);
        return;
      }
      if (m.t === 'fetched') {
        const f = job.onFetched;
        job.onFetched = undefined;
        f?.(m.outcome);
        return;
      }
      if (m.t === 'progress') return job.onProgress?.(m.bytes);
      if (m.t === 'ack') {
        job.inflight -= m.bytes;
        const w = job.wake;
        job.wake = undefined;
        w?.();
        return;
      }
      this.finish(m.id, job);
      if (m.t === 'done') job.resolve(m.result);
      else job.reject(Object.assign(new Error(m.message), { name: m.name, ...(m.code ? { code: m.code } : {}) }));
    });
    const gone = (e: Error) => {
      if (this.dead) return;
      this.dead = true;
      ready();
      clearTimeout(this.idle);
      for (const [id, job] of this.jobs) {
        this.finish(id, job);
        job.reject(e);
      }
      this.onGone(this);
    };
    this.worker.on('error', gone);
    this.worker.on('exit', (code) => gone(new Error(`layer reader thread exited (code ${code})`)));
    this.worker.unref();
    this.idleFromNow();
  }

  private finish(id: number, job: Job): void {
    if (!job.settled) this.load -= job.weight;
    job.settled = true;
    const f = job.onInput;
    job.onInput = undefined;
    f?.(undefined);
    const g = job.onFetched;
    job.onFetched = undefined;
    g?.({ ok: false, fallback: false, code: 'UNAVAILABLE', message: 'the layer reader thread stopped' });
    this.jobs.delete(id);
    const w = job.wake;
    job.wake = undefined;
    w?.();
    if (this.jobs.size === 0 && !this.dead) {
      this.worker.unref();
      this.idleFromNow();
      trimWhenQuiet();
    }
  }

  /** Stops the thread IDLE_MS from now unless a job comes (also a prewarmed one never used). */
  private idleFromNow(): void {
    clearTimeout(this.idle);
    this.idle = setTimeout(() => {
      // Out of the pool first, so that no new job picks a thread that is going away.
      this.dead = true;
      this.onGone(this);
      freeSlabs.length = 0;
      const gone = this.worker.terminate().then(() => trimWhenQuiet(), () => undefined);
      stopping.add(gone);
      void gone.finally(() => stopping.delete(gone));
    }, IDLE_MS).unref();
  }

  start(id: number, job: Job): void {
    this.load += job.weight;
    clearTimeout(this.idle);
    this.worker.ref();
    this.jobs.set(id, job);
  }

  post(m: ToWorker, transfer?: ArrayBuffer[]): void {
    if (!this.dead) this.worker.postMessage(m, transfer);
  }
}

const pool: LayerWorker[] = [];
let nextId = 1;
let trimTimer: NodeJS.Timeout | undefined;
/** Terminations of idle workers under way (closeLayerWorkers waits for them). */
const stopping = new Set<Promise<void>>();

/** Trims the C heap TRIM_AFTER_MS from now unless a worker has work again by then. */
function trimWhenQuiet(): void {
  clearTimeout(trimTimer);
  trimTimer = setTimeout(() => {
    trimTimer = undefined;
    if (pool.every((w) => w.jobs.size === 0)) releaseFreedMemory();
  }, TRIM_AFTER_MS).unref();
}

function remove(w: LayerWorker): void {
  const i = pool.indexOf(w);
  if (i >= 0) pool.splice(i, 1);
}

/**
 * The least loaded worker (bytes of the layers it reads, as far as known); a new one while the
 * pool is not full and every worker has work. By bytes, not jobs: a 42 MB layer and a 12 MB
 * one on one thread while the other had 1 MB and 18 MB left that thread idle for a third of
 * the pull.
 */
function pick(): LayerWorker {
  let best: LayerWorker | undefined;
  for (const w of pool) if (!best || w.load < best.load) best = w;
  if ((!best || best.jobs.size > 0) && pool.length < Math.max(1, configuredSize())) {
    best = new LayerWorker(remove);
    pool.push(best);
  }
  return best!;
}

/** Starts the pool's workers (not waiting for them); resolves once they are ready. */
export function prewarmLayerWorkers(): Promise<void> {
  const n = configuredSize();
  while (pool.length < n) pool.push(new LayerWorker(remove));
  return Promise.all(pool.map((w) => w.ready)).then(() => undefined);
}

/** Threads in the pool now (tests, metrics). */
export function layerWorkerCount(): number {
  return pool.length;
}

/** Stops the workers (tests, shutdown); layer reads in progress fail. */
export async function closeLayerWorkers(): Promise<void> {
  const all = pool.splice(0);
  await Promise.all([...all.map((w) => w.worker.terminate()), ...stopping]);
  clearTimeout(trimTimer);
  trimTimer = undefined;
}

function toBuffer(u: Uint8Array): Buffer {
  return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

function toBufferMap(m: Map<string, Uint8Array> | null): Map<string, Buffer> | null {
  if (!m) return null;
  const out = new Map<string, Buffer>();
  for (const [k, v] of m) out.set(k, toBuffer(v));
  return out;
}

/** Structured cloning turned Buffers into Uint8Arrays and FileNodes into plain objects. */
function revive(r: LayerRead): LayerRead {
  for (const op of r.ops as Op[]) {
    op.xattrs = toBufferMap(op.xattrs as any);
    const f = op.file as any;
    if (f) {
      const n = new FileNode(f.mode, f.uid, f.gid, f.mtime, f.mtimeNsec, toBufferMap(f.xattrs));
      n.size = f.size;
      n.blkaddr = f.blkaddr;
      n.tail = f.tail ? toBuffer(f.tail) : null;
      op.file = n;
    }
  }
  return r;
}

export interface RemoteRead {
  result: Promise<LayerRead>;
  /** Stops the read (the build failed elsewhere); `result` settles once the worker stopped writing. */
  abort(message: string, cancel?: boolean): void;
}

/**
 * Reads one layer on a worker: feeds it `input`, or has it download `p.fetch` (then
 * `p.onFetched` gets the download's outcome before `result` settles), and resolves with what
 * readLayerStream returned there. Errors keep their name ('UnsafeArchiveError',
 * 'BuildFailedError', 'FetchFallbackError' …), message and code. `result` settles only after
 * the worker has stopped writing to `fd` (and to the blob's file).
 */
export function readOnWorker(
  input: AsyncIterable<Buffer> | null,
  p: {
    fd: number;
    cells: BigInt64Array;
    limits: UnpackLimits;
    diffId?: string;
    label: string;
    owned: boolean;
    /** The input's size in bytes when known (balances the workers). */
    size?: number;
    inputDigest?: (digest: string | undefined) => void;
    fetch?: RemoteBlob;
    onFetched?: (o: FetchOutcome) => void;
    onProgress?: (bytes: number) => void;
  },
): RemoteRead {
  const w = pick();
  const id = nextId++;
  let resolve!: (r: LayerRead) => void;
  let reject!: (e: Error) => void;
  const done = new Promise<LayerRead>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  done.catch(() => undefined);
  const job: Job = { weight: Math.max(1, p.fetch?.size ?? p.size ?? 1 << 20), inflight: 0, settled: false, wake: undefined, resolve, reject, onInput: p.inputDigest, onFetched: p.onFetched, onProgress: p.onProgress };
  w.start(id, job);
  w.post({ t: 'start', id, fd: p.fd, cells: p.cells, limits: p.limits, diffId: p.diffId, label: p.label, hashInput: !!p.inputDigest, fetch: p.fetch });
  const abort = (message: string, cancel?: boolean) => {
    if (!job.settled) w.post({ t: 'abort', id, message, cancel });
  };
  if (!input) return { result: done.then(revive), abort };

  const result = (async () => {
    let inputError: unknown;
    let settledWake: Promise<void> | undefined;
    const settled = () => (settledWake ??= done.then(() => undefined, () => undefined));
    const it = input[Symbol.asyncIterator]();
    let slab: SharedArrayBuffer | undefined;
    let fill = 0;
    const flush = () => {
      if (!slab) return;
      if (fill > 0 && !job.settled) {
        job.inflight += fill;
        w.post({ t: 'shared', id, sab: slab, len: fill });
      } else {
        returnSlab(slab);
      }
      slab = undefined;
      fill = 0;
    };
    try {
      for (;;) {
        if (job.settled) break;
        const next = it.next();
        // A worker that failed (or was aborted) must not wait for the download's next chunk.
        const r = await Promise.race([next, settled().then(() => null)]);
        if (r === null) {
          next.catch(() => undefined);
          break;
        }
        if (r.done) {
          flush();
          w.post({ t: 'end', id });
          break;
        }
        const c = r.value;
        if (c.length === 0) continue;
        // A large chunk that is all ours (a whole, unshared ArrayBuffer: not a slice of
        // Buffer's pool or of a socket read) is transferred; the others are packed into slabs.
        if (p.owned && c.length >= TRANSFER_MIN && c.byteOffset === 0 && c.byteLength === c.buffer.byteLength && Object.prototype.toString.call(c.buffer) === '[object ArrayBuffer]') {
          flush();
          const buf = c.buffer as ArrayBuffer;
          job.inflight += c.length;
          w.post({ t: 'data', id, buf }, [buf]);
        } else {
          for (let off = 0; off < c.length; ) {
            slab ??= takeSlab();
            const n = Math.min(c.length - off, SLAB - fill);
            new Uint8Array(slab, fill, n).set(c.subarray(off, off + n));
            fill += n;
            off += n;
            if (fill === SLAB) flush();
          }
        }
        while (job.inflight > WINDOW && !job.settled) await new Promise<void>((res) => (job.wake = res));
      }
    } catch (e) {
      inputError = e ?? new Error('layer input failed');
      abort(`layer input failed: ${(e as any)?.message ?? e}`);
    } finally {
      if (job.settled || inputError !== undefined) void it.return?.()?.catch?.(() => undefined);
    }
    try {
      const r = await done;
      if (inputError !== undefined) throw inputError;
      return revive(r);
    } catch (e) {
      throw inputError ?? e;
    }
  })();
  return { result, abort };
}
