// Content-addressed blob store: <root>/blobs/sha256/<hex>. A blob becomes visible only after
// its size and digest were checked: it is written to <root>/tmp, hashed while streaming,
// fsynced, then renamed into place (and the directory fsynced). Concurrent ingests of one
// digest share a single download, which a caller can tap to read the bytes as they arrive.
import { createHash, randomBytes, type Hash } from 'node:crypto';
import { createReadStream, promises as fsp, constants as C } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { PodvisorError} from '../util/errors';
import { BatchWriter } from './batch-writer';
import { ensureDir, fsyncDir } from '../util/dirs';

const HEX = /^[a-f0-9]{64}$/;

export interface BlobRef {
  digest: string;
  size: number;
}

export type Progress = (done: number, total: number) => void;

/** A blob being written through `fd` by someone else (ContentStore.stage). */
export interface StagedBlob {
  fd: number;
  /** Checks size and digest (DATA_LOSS), syncs, moves it into place; removes it on mismatch. */
  commit(bytes: number, digest: () => Promise<string>): Promise<void>;
  /** Removes the file (nothing was stored); concurrent ingests then download it themselves. */
  discard(): Promise<void>;
}

async function hashFile(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(file, { highWaterMark: 1 << 20 })) h.update(c);
  return `sha256:${h.digest('hex')}`;
}

export class ContentStore {
  readonly blobDir: string;
  private inflight = new Map<string, Promise<void>>();

  constructor(readonly root: string, private readonly tmpDir: string) {
    this.blobDir = path.join(root, 'blobs', 'sha256');
  }

  async init(): Promise<void> {
    await fsp.mkdir(this.blobDir, { recursive: true });
    await ensureDir(this.tmpDir, 0o700);
  }

  path(digest: string): string {
    const hex = digest.replace(/^sha256:/, '');
    if (!HEX.test(hex)) throw new PodvisorError('invalid_argument', `unsupported digest ${digest}`);
    return path.join(this.blobDir, hex);
  }

  async has(b: BlobRef): Promise<boolean> {
    try {
      const st = await fsp.stat(this.path(b.digest));
      return st.size === b.size;
    } catch {
      return false;
    }
  }

  async read(digest: string): Promise<Buffer> {
    return fsp.readFile(this.path(digest));
  }

  /** Stores bytes already in memory (manifests, configs) after checking their digest. */
  async putBuffer(b: BlobRef, bytes: Buffer): Promise<void> {
    if (await this.has(b)) return;
    await this.ingest(b, async () => (async function* () {
      yield bytes;
    })());
  }

  /**
   * Makes blob `b` present, downloading it with `open` unless it already is. Resolves once
   * the verified blob is in place; rejects with DATA_LOSS when the content does not match.
   * `tap` sees every downloaded chunk in order as it arrives (its promise is awaited: back
   * pressure; its rejection aborts the download). Resolves true when this call downloaded
   * the blob through `tap`, false when the blob was already there or another call was
   * downloading it (then `tap` saw nothing).
   *
   * With `tapDigest`, the tap's consumer hashes the bytes instead of this call (a layer
   * reader on a worker thread sees every one of them anyway): once every chunk has gone
   * through `tap` and been written, `tapDigest()` gives the sha256 of all of them, or
   * undefined when the consumer stopped early; then the written file is hashed here. Either
   * way the digest is checked before the blob is synced and moved into place.
   */
  ingest(
    b: BlobRef,
    open: () => Promise<AsyncIterable<Buffer> | Readable>,
    progress?: Progress,
    tap?: (chunk: Buffer) => Promise<void> | void,
    tapDigest?: () => Promise<string | undefined>,
  ): Promise<boolean> {
    const key = b.digest;
    const running = this.inflight.get(key);
    // Once the other call is done, the blob is there (false), or that call gave up without
    // storing it (a staged blob discarded) and this one downloads it.
    if (running) return running.then(() => this.ingest(b, open, progress, tap, tapDigest));
    const p = (async () => {
      if (await this.has(b)) return false;
      await this.download(b, open, progress, tap, tap ? tapDigest : undefined);
      return true;
    })().finally(() => this.inflight.delete(key));
    this.inflight.set(key, p.then(() => undefined));
    this.inflight.get(key)!.catch(() => undefined);
    return p;
  }

  /**
   * Starts storing blob `b` through a descriptor that someone else fills (a layer worker's
   * own download, layer-fetch.ts). Undefined when the blob is present or another call is
   * storing it. Until commit() or discard(), concurrent ingests of the digest wait.
   */
  async stage(b: BlobRef): Promise<StagedBlob | undefined> {
    if (this.inflight.has(b.digest) || (await this.has(b)) || this.inflight.has(b.digest)) return undefined;
    let settle!: () => void;
    let fail!: (e: unknown) => void;
    const running = new Promise<void>((res, rej) => ((settle = res), (fail = rej)));
    running.catch(() => undefined);
    this.inflight.set(b.digest, running);
    const end = (e?: unknown) => {
      this.inflight.delete(b.digest);
      if (e === undefined) settle();
      else fail(e);
    };
    let t: { tmp: string; fh: fsp.FileHandle };
    try {
      t = await this.tempFile(b);
    } catch (e) {
      end();
      throw e;
    }
    let closed = false;
    return {
      fd: t.fh.fd,
      commit: async (bytes, digest) => {
        closed = true;
        try {
          await this.keep(b, t.tmp, t.fh, bytes, digest);
          end();
        } catch (e) {
          end(e);
          throw e;
        }
      },
      discard: async () => {
        if (closed) return;
        closed = true;
        await t.fh.close().catch(() => undefined);
        await fsp.rm(t.tmp, { force: true });
        end();
      },
    };
  }

  private async tempFile(b: BlobRef): Promise<{ tmp: string; fh: fsp.FileHandle }> {
    const tmp = path.join(this.tmpDir, `blob-${b.digest.slice(7, 19)}-${randomBytes(6).toString('hex')}`);
    return { tmp, fh: await fsp.open(tmp, C.O_WRONLY | C.O_CREAT | C.O_EXCL, 0o644) };
  }

  /** Checks what was written to `tmp`, syncs it and moves it into place; removes it if it does not match. */
  private async keep(b: BlobRef, tmp: string, fh: fsp.FileHandle, bytes: number, digest: () => Promise<string>): Promise<void> {
    let ok = false;
    try {
      if (bytes !== b.size) throw new PodvisorError('data_loss', `blob ${b.digest}: size mismatch (expected ${b.size}, got ${bytes})`);
      const got = await digest();
      if (got !== b.digest) throw new PodvisorError('data_loss', `blob ${b.digest}: digest mismatch (got ${got})`);
      await fh.sync();
      ok = true;
    } finally {
      await fh.close();
      if (!ok) await fsp.rm(tmp, { force: true });
    }
    await fsp.rename(tmp, this.path(b.digest));
    await fsyncDir(this.blobDir);
  }

  private async download(
    b: BlobRef,
    open: () => Promise<AsyncIterable<Buffer> | Readable>,
    progress?: Progress,
    tap?: (chunk: Buffer) => Promise<void> | void,
    tapDigest?: () => Promise<string | undefined>,
  ): Promise<void> {
    const { tmp, fh } = await this.tempFile(b);
    let handed = false;
    try {
      const src = await open();
      const hash: Hash | null = tapDigest ? null : createHash('sha256');
      let n = 0;
      // Network chunks are small: they are written in batches of ~1 MiB, two batches in flight.
      const out = new BatchWriter(fh.fd);
      try {
        try {
          for await (const chunk of src as AsyncIterable<Buffer>) {
            n += chunk.length;
            if (n > b.size) throw new PodvisorError('data_loss', `blob ${b.digest}: more data than its size ${b.size}`);
            hash?.update(chunk);
            await out.add(chunk);
            if (tap) await tap(chunk);
            progress?.(n, b.size);
          }
          await out.finish();
        } finally {
          await out.settle();
        }
      } catch (e: any) {
        if (e instanceof PodvisorError) throw e;
        // A reset connection or body timeout: the blob is incomplete, the pull can be retried.
        throw new PodvisorError('unavailable', `blob ${b.digest}: download interrupted after ${n} of ${b.size} bytes: ${e?.message ?? e}`);
      } finally {
        (src as Readable).destroy?.();
      }
      handed = true;
      await this.keep(b, tmp, fh, n, async () => (hash ? `sha256:${hash.digest('hex')}` : ((await tapDigest!()) ?? (await hashFile(tmp)))));
    } finally {
      if (!handed) {
        await fh.close();
        await fsp.rm(tmp, { force: true });
      }
    }
  }

  async delete(digest: string): Promise<void> {
    await fsp.rm(this.path(digest), { force: true });
  }

  /** Every stored digest. */
  async list(): Promise<string[]> {
    const names = await fsp.readdir(this.blobDir).catch(() => [] as string[]);
    return names.filter((n) => HEX.test(n)).map((n) => `sha256:${n}`);
  }
}
