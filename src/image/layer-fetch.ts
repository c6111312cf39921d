// A layer worker's own download of a blob (layer-worker.ts): the GET, every body chunk hashed
// (the blob's digest), written to the content store's temp file (positioned writes through
// the descriptor the main thread opened) and handed to the layer reader on the same thread.
// Nothing of the ~70 MB of a large image then crosses the main thread, whose event loop was
// ~90% busy relaying it (socket buffers, copies into shared memory, messages, garbage).
// The main thread verifies size and digest, syncs and renames the file (content-store.ts).
import { createHash } from 'node:crypto';
import { BatchWriter } from './batch-writer';
import { exchange, type HttpResponse, type TlsSettings } from './http';

/** Where a worker fetches a blob from: the endpoint that served the manifest, with its auth. */
export interface BlobSource {
  url: string;
  headers: Record<string, string>;
  tls: TlsSettings;
}

export interface RemoteBlob {
  source: BlobSource;
  digest: string;
  size: number;
  /** The content store's temp file for the blob. */
  fd: number;
}

const PIECE = 1 << 20;

export type FetchOutcome =
  | { ok: true; bytes: number; digest: string }
  /**
   * `fallback`: nothing was read (connection failed, or an answer other than 200 such as an
   * expired token's 401): the main thread fetches the blob the usual way, with endpoint
   * fail-over and auth challenges. Otherwise the download failed part-way (`code`).
   */
  | { ok: false; fallback: boolean; code?: 'UNAVAILABLE' | 'DATA_LOSS' | 'CANCELLED'; message: string };

/** Starts the GET: the response when it is a 200, else the outcome (a fallback: nothing was read). */
export async function openBlob(b: RemoteBlob, signal: AbortSignal): Promise<HttpResponse | FetchOutcome> {
  let res: HttpResponse;
  try {
    res = await exchange(b.source.url, 'GET', b.source.headers, b.source.tls, signal);
  } catch (e: any) {
    return { ok: false, fallback: true, message: String(e?.message ?? e) };
  }
  // Destroying an unfinished body emits an error: unheard, it would kill the worker thread.
  res.body.on('error', () => undefined);
  if (res.status !== 200) {
    res.body.destroy();
    return { ok: false, fallback: true, message: `HTTP ${res.status}` };
  }
  return res;
}

/**
 * Streams the body: hashed, written to `b.fd` (BatchWriter), and given to `sink` (its promise
 * is the reader's back pressure) while `sinkAlive()`. Resolves when every write has completed,
 * so the main thread may close the file after the outcome.
 */
export async function streamBlob(
  b: RemoteBlob,
  res: HttpResponse,
  sink: (chunk: Buffer) => Promise<void>,
  sinkAlive: () => boolean,
  signal: AbortSignal,
  progress: (bytes: number) => void,
): Promise<FetchOutcome> {
  const hash = createHash('sha256');
  let n = 0;
  const out = new BatchWriter(b.fd);
  // Network reads are ~16–64 KiB; the reader gets them joined into ~1 MiB pieces, so that
  // its inflater (a job on libuv's thread pool per piece) runs ~1 MiB at a time, not per read.
  let pend: Buffer[] = [];
  let pendBytes = 0;
  const give = async () => {
    if (pendBytes === 0) return;
    const piece = pend.length === 1 ? pend[0] : Buffer.concat(pend, pendBytes);
    pend = [];
    pendBytes = 0;
    if (sinkAlive()) await sink(piece);
  };
  try {
    for await (const c of res.body as AsyncIterable<Buffer>) {
      n += c.length;
      if (n > b.size) return { ok: false, fallback: false, code: 'DATA_LOSS', message: `blob ${b.digest}: more data than its size ${b.size}` };
      hash.update(c);
      await out.add(c);
      pend.push(c);
      pendBytes += c.length;
      if (pendBytes >= PIECE) await give();
      progress(n);
    }
    await give();
    await out.finish();
  } catch (e: any) {
    if (signal.aborted) return { ok: false, fallback: false, code: 'CANCELLED', message: 'pull aborted' };
    if (out.failure) return { ok: false, fallback: false, code: 'UNAVAILABLE', message: `blob ${b.digest}: writing it failed: ${out.failure.message}` };
    // A reset connection or body timeout: the blob is incomplete, the pull can be retried.
    return { ok: false, fallback: false, code: 'UNAVAILABLE', message: `blob ${b.digest}: download interrupted after ${n} of ${b.size} bytes: ${e?.message ?? e}` };
  } finally {
    res.body.destroy();
    await out.settle();
  }
  return { ok: true, bytes: n, digest: `sha256:${hash.digest('hex')}` };
}
