// Content-addressed blob store: <root>/blobs/sha256/<hex>. A blob becomes visible only after
// its size and digest were checked: it is written to <root>/tmp, hashed while streaming,
// fsynced, then renamed into place (and the directory fsynced). Concurrent ingests of one
// digest share a single download.
import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp, constants as C } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { CriError, Code } from '../cri/errors';

const HEX = /^[a-f0-9]{64}$/;

export interface BlobRef {
  digest: string;
  size: number;
}

export type Progress = (done: number, total: number) => void;

export async function fsyncDir(dir: string): Promise<void> {
  const fh = await fsp.open(dir, C.O_RDONLY | C.O_DIRECTORY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export class ContentStore {
  readonly blobDir: string;
  private inflight = new Map<string, Promise<void>>();

  constructor(readonly root: string, private readonly tmpDir: string) {
    this.blobDir = path.join(root, 'blobs', 'sha256');
  }

  async init(): Promise<void> {
    await fsp.mkdir(this.blobDir, { recursive: true });
    await fsp.mkdir(this.tmpDir, { recursive: true, mode: 0o700 });
  }

  path(digest: string): string {
    const hex = digest.replace(/^sha256:/, '');
    if (!HEX.test(hex)) throw new CriError(Code.INVALID_ARGUMENT, `unsupported digest ${digest}`);
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
   */
  ingest(b: BlobRef, open: () => Promise<AsyncIterable<Buffer> | Readable>, progress?: Progress): Promise<void> {
    const key = b.digest;
    const running = this.inflight.get(key);
    if (running) return running;
    const p = (async () => {
      if (await this.has(b)) return;
      await this.download(b, open, progress);
    })().finally(() => this.inflight.delete(key));
    this.inflight.set(key, p);
    return p;
  }

  private async download(b: BlobRef, open: () => Promise<AsyncIterable<Buffer> | Readable>, progress?: Progress): Promise<void> {
    const final = this.path(b.digest);
    const tmp = path.join(this.tmpDir, `blob-${b.digest.slice(7, 19)}-${randomBytes(6).toString('hex')}`);
    const fh = await fsp.open(tmp, C.O_WRONLY | C.O_CREAT | C.O_EXCL, 0o644);
    let ok = false;
    try {
      const src = await open();
      const hash = createHash('sha256');
      let n = 0;
      try {
        for await (const chunk of src as AsyncIterable<Buffer>) {
          n += chunk.length;
          if (n > b.size) throw new CriError(Code.DATA_LOSS, `blob ${b.digest}: more data than its size ${b.size}`);
          hash.update(chunk);
          await fh.write(chunk);
          progress?.(n, b.size);
        }
      } catch (e: any) {
        if (e instanceof CriError) throw e;
        // A reset connection or body timeout: the blob is incomplete, the pull can be retried.
        throw new CriError(Code.UNAVAILABLE, `blob ${b.digest}: download interrupted after ${n} of ${b.size} bytes: ${e?.message ?? e}`);
      } finally {
        (src as Readable).destroy?.();
      }
      if (n !== b.size) throw new CriError(Code.DATA_LOSS, `blob ${b.digest}: size mismatch (expected ${b.size}, got ${n})`);
      const got = `sha256:${hash.digest('hex')}`;
      if (got !== b.digest) throw new CriError(Code.DATA_LOSS, `blob ${b.digest}: digest mismatch (got ${got})`);
      await fh.sync();
      ok = true;
    } finally {
      await fh.close();
      if (!ok) await fsp.rm(tmp, { force: true });
    }
    await fsp.rename(tmp, final);
    await fsyncDir(this.blobDir);
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
