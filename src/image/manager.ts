// The image service: pulls images into a content-addressed store, turns each into one
// read-only erofs file shared by all its containers, and keeps the names (tags, digests)
// pointing at them. This module is the pull's orchestration (download, verify, build); the
// catalog (catalog.ts) keeps which images exist, their names, who uses them and what is
// garbage. Layout under `root`:
//   blobs/sha256/<hex>     manifests, configs, compressed layers (verified)
//   erofs/<id hex>.erofs   one per image id (built as erofs/.tmp-* until complete)
//   tmp/                   downloads in progress (wiped at init, like erofs/.tmp-*)
//   metadata.json          the index (metadata.ts)
// Layers are read into the image while they download (a tee of each download), all at once,
// and applied in order once verified (unpack.ts); the image file is written directly
// (erofs.ts). A pull becomes visible only when blobs, erofs file and metadata are all
// durable, so a failed or interrupted pull leaves nothing half-visible and can be retried.
import { createReadStream, promises as fsp } from 'node:fs';
import path from 'node:path';
import { PodvisorError, internal } from '../util/errors';
import { ChunkChannel } from '../util/chunk-channel';
import { semaphore } from '../util/semaphore';

export { ChunkChannel } from '../util/chunk-channel';
import type { Logger } from '../util/log';
import { credentialsFrom, type AuthConfig } from './auth';
import { ContentStore, type Progress, type StagedBlob } from './content-store';
import type { FetchOutcome } from './layer-fetch';
import { dirUsage, ImageCatalog, type ImageRecord } from './catalog';
import { formatReference, parseReference, repoName, type Reference } from './reference';
import { RepositorySession, type Descriptor, type ResolvedImage } from './registry';
import { layerWorkersEnabled, prewarmLayerWorkers } from './layer-pool';
import { warmUpImageBuild } from './warm-up';
import { BuildFailedError, DEFAULT_LIMITS, ImageBuilder, UnsafeArchiveError, type UnpackLimits } from './unpack';
import { ensureDir } from '../util/dirs';
import { faultPoint } from '../util/fault';

export type { AuthConfig } from './auth';

export type { ImageRecord } from './catalog';
export { dirUsage, parseUser } from './catalog';

/** Told of every pull's end and of the layer bytes fetched from registries (the daemon's metrics). */
export interface ImagePullObserver {
  /** a pull ended: its seconds and 'ok' or the error code it failed with */
  pulled(seconds: number, outcome: string): void;
  /** layer bytes downloaded from a registry (layers already stored cost none) */
  fetched(bytes: number): void;
}

export interface ImageManagerOptions {
  root: string;
  configDir: string;
  logger: Logger;
  pinned?: string[];
  /** Caps against hostile layers (defaults in unpack.ts). */
  limits?: Partial<UnpackLimits>;
  /** Parallel layer downloads per pull. */
  downloadConcurrency?: number;
  observe?: ImagePullObserver;
}

const PROGRESS_MIN_BYTES = 8 << 20;

export class ImageManager {
  private readonly root: string;
  private readonly content: ContentStore;
  private readonly erofsDir: string;
  private readonly tmpDir: string;
  private readonly log: Logger;
  private readonly limits: UnpackLimits;
  /** the images, their names and users (lookup, refcount, GC) */
  readonly catalog: ImageCatalog;
  private building = new Map<string, Promise<void>>();

  constructor(private readonly opts: ImageManagerOptions) {
    this.root = path.resolve(opts.root);
    this.tmpDir = path.join(this.root, 'tmp');
    this.erofsDir = path.join(this.root, 'erofs');
    this.content = new ContentStore(this.root, this.tmpDir);
    this.log = opts.logger.child({ component: 'images' });
    this.limits = { ...DEFAULT_LIMITS, ...opts.limits };
    const pinnedRefs = new Set<string>();
    for (const r of opts.pinned ?? []) {
      try {
        pinnedRefs.add(formatReference(parseReference(r)));
      } catch {
        this.log.warn({ ref: r }, 'ignoring invalid pinned image reference');
      }
    }
    this.catalog = new ImageCatalog(this.root, this.erofsDir, this.content, pinnedRefs, this.log);
  }

  /** Loads the index, drops half-done pulls and content nothing refers to. */
  async init(): Promise<void> {
    await ensureDir(this.root, 0o700);
    await fsp.rm(this.tmpDir, { recursive: true, force: true });
    await fsp.rm(path.join(this.root, 'warm-up'), { recursive: true, force: true });
    await this.content.init();
    await fsp.mkdir(this.erofsDir, { recursive: true });
    // Images whose build was interrupted (ImageBuilder's temp files).
    for (const f of await fsp.readdir(this.erofsDir)) if (f.startsWith('.tmp-')) await fsp.rm(path.join(this.erofsDir, f), { force: true });
    await this.catalog.load();
    await this.catalog.collectGarbage(false);
    // Layer reader threads (layer-pool.ts), started now so that a first pull need not wait,
    // and the build path run once (in the background, ~0.5 s) so that the first pull does not
    // run it unoptimized (warm-up.ts).
    if (layerWorkersEnabled()) {
      void prewarmLayerWorkers().catch(() => undefined);
      void warmUpImageBuild(path.join(this.root, 'warm-up'), this.log);
    }
    this.log.info({ images: this.list().length }, 'image store ready');
  }

  // ---- the catalog's, for the runtime and the CRI image service -------------------------

  resolve(refOrId: string): ImageRecord | undefined {
    return this.catalog.resolve(refOrId);
  }

  list(filterRef?: string): ImageRecord[] {
    return this.catalog.list(filterRef);
  }

  remove(refOrId: string): Promise<void> {
    return this.catalog.remove(refOrId);
  }

  acquire(id: string): void {
    this.catalog.acquire(id);
  }

  release(id: string): void {
    this.catalog.release(id);
  }

  collectGarbage(dropRemoved = true): Promise<void> {
    return this.catalog.collectGarbage(dropRemoved);
  }

  async fsInfo(): Promise<{ mountpoint: string; usedBytes: number; inodesUsed: number; timestamp: number }> {
    const u = await dirUsage(this.root);
    return { mountpoint: this.root, usedBytes: u.bytes, inodesUsed: u.inodes, timestamp: Date.now() };
  }

  // ---- pull ----------------------------------------------------------------------------

  async pull(ref: string, auth?: AuthConfig): Promise<ImageRecord> {
    const parsed = parseReference(ref);
    const t0 = process.hrtime.bigint();
    const seconds = () => Number(process.hrtime.bigint() - t0) / 1e9;
    this.catalog.pullStarted();
    try {
      const rec = await this.pullParsed(parsed, auth);
      this.opts.observe?.pulled(seconds(), 'ok');
      return rec;
    } catch (err) {
      this.opts.observe?.pulled(seconds(), err instanceof PodvisorError ? err.code : 'internal');
      throw err;
    } finally {
      this.catalog.pullEnded();
    }
  }

  private async pullParsed(parsed: Reference, auth?: AuthConfig): Promise<ImageRecord> {
    const name = formatReference(parsed);
    const started = Date.now();
    const session = await RepositorySession.open(parsed, this.opts.configDir, credentialsFrom(auth), this.log);
    const resolved = await session.resolve();
    const manifest = resolved.manifest;
    const configDesc = manifest.config;
    const id = configDesc.digest;
    this.log.info({ ref: name, id, manifest: resolved.manifestDigest }, 'pulling image');
    this.catalog.holdForPull(id);
    try {
      return await this.pullImage(parsed, session, resolved, started);
    } finally {
      this.catalog.unholdForPull(id);
    }
  }

  private async pullImage(parsed: Reference, session: RepositorySession, resolved: ResolvedImage, started: number): Promise<ImageRecord> {
    const name = formatReference(parsed);
    const manifest = resolved.manifest;
    const configDesc = manifest.config;
    const id = configDesc.digest;

    // Manifests and config are stored like any blob (verified) for a later rebuild/inspection:
    // written and synced while the layers download (their digests were checked in memory), and
    // waited for before the image is recorded.
    const configBytes = (await this.content.has(configDesc)) ? await this.content.read(id) : await session.fetchSmallBlob(configDesc);
    const small: [{ digest: string; size: number }, Buffer][] = [[{ digest: resolved.topDigest, size: resolved.topBytes.length }, resolved.topBytes]];
    if (resolved.manifestDigest !== resolved.topDigest) small.push([{ digest: resolved.manifestDigest, size: resolved.manifestBytes.length }, resolved.manifestBytes]);
    small.push([configDesc, configBytes]);
    const stored = Promise.all(small.map(([d, bytes]) => this.content.putBuffer(d, bytes)));
    stored.catch(() => undefined);
    try {
      return await this.pullStored(parsed, session, resolved, started, configBytes, stored);
    } finally {
      await stored.catch(() => undefined); // nothing keeps writing after the pull returned
    }
  }

  private async pullStored(parsed: Reference, session: RepositorySession, resolved: ResolvedImage, started: number, configBytes: Buffer, stored: Promise<unknown>): Promise<ImageRecord> {
    const name = formatReference(parsed);
    const manifest = resolved.manifest;
    const id = manifest.config.digest;
    faultPoint('image.pull:resolved');
    let config: any;
    try {
      config = JSON.parse(configBytes.toString('utf8'));
    } catch {
      throw new PodvisorError('failed_precondition', `${name}: image config ${id} is not JSON`);
    }
    const diffIds: unknown = config?.rootfs?.diff_ids;
    if (!Array.isArray(diffIds) || diffIds.length !== manifest.layers.length)
      throw new PodvisorError('failed_precondition', `${name}: config has ${Array.isArray(diffIds) ? diffIds.length : 'no'} diff_ids for ${manifest.layers.length} layers`);

    const existing = this.catalog.get(id);
    if (!existing || !(await this.catalog.erofsExists(existing.stored))) {
      let b = this.building.get(id);
      if (!b) {
        b = this.build(id, session, resolved, diffIds as string[]).finally(() => this.building.delete(id));
        this.building.set(id, b);
      }
      await b;
    }
    await stored;
    faultPoint('image.pull:built');

    // Point the names at the image (moving a tag away from an older image if needed).
    const record = await this.catalog.bind(id, resolved, config, parsed.tag ? name : undefined, `${repoName(parsed)}@${resolved.topDigest}`);
    faultPoint('image.pull:saved');
    this.log.info({ ref: name, id, ms: Date.now() - started }, 'pulled image');
    return record;
  }

  /**
   * Downloads the layers (a few at a time) and reads each one into the image as its bytes
   * arrive (a tee of the download), all layers at once; each layer's changes are applied in
   * order once its blob digest and diff_id are verified (unpack.ts), then the erofs metadata
   * is written and the file synced (erofs.ts). Layers already in the store are read from it.
   */
  private async build(id: string, session: RepositorySession, r: ResolvedImage, diffIds: string[]): Promise<void> {
    const layers = r.manifest.layers;
    const abort = new AbortController();
    const t0 = Date.now();
    const builder = await ImageBuilder.create(path.join(this.erofsDir, `${id.slice(7)}.erofs`), this.log, this.limits);
    const slot = semaphore(Math.max(1, this.opts.downloadConcurrency ?? 4));
    const jobs = layers.map((l, i) => this.layerJob(session, l, i, diffIds[i], builder, abort.signal, slot, t0));
    jobs.forEach((j) => j.catch(() => abort.abort()));
    try {
      const settled = await Promise.allSettled(jobs);
      // The first layer that failed by itself names the cause; the others only stopped.
      const failed = settled.filter((x): x is PromiseRejectedResult => x.status === 'rejected').map((x) => x.reason);
      const secondary = (e: unknown) => e instanceof BuildFailedError || (e instanceof PodvisorError && e.code === 'cancelled');
      if (failed.length) throw failed.find((e) => !secondary(e)) ?? failed[0].reason ?? failed[0];
      const t1 = Date.now();
      const { bytes, inodes, metadataMs, syncMs } = await builder.commit();
      this.log.info({ id, layers: layers.length, layersMs: t1 - t0, erofsMs: Date.now() - t1, metadataMs, syncMs, bytes, inodes }, 'image built');
    } catch (e) {
      abort.abort();
      await builder.abort();
      throw e;
    }
  }

  /** Fetches layer `i` (unless stored) and feeds it to the builder while it downloads. */
  private async layerJob(
    session: RepositorySession,
    l: Descriptor,
    i: number,
    diffId: string,
    builder: ImageBuilder,
    signal: AbortSignal,
    slot: () => Promise<() => void>,
    t0: number,
  ): Promise<void> {
    if (await this.remoteLayer(session, l, i, diffId, builder, signal, slot, t0)) return;
    const file = this.content.path(l.digest);
    // Layer readers on worker threads pack the chunks into shared memory themselves (one
    // copy); the main-thread reader wants them joined into larger pieces.
    const ch = new ChunkChannel(16 << 20, 1 << 20, !builder.workers);
    let tapped = false;
    let cancelled = false;
    // The layer reader hashes the blob's bytes as it reads them (on its worker thread).
    let setInputDigest!: (d: string | undefined) => void;
    const inputDigest = new Promise<string | undefined>((r) => (setInputDigest = r));
    const download = (async () => {
      if (await this.content.has(l)) return;
      const release = await slot();
      try {
        if (signal.aborted) throw new PodvisorError('cancelled', 'pull aborted');
        const fetched = await this.content.ingest(
          l,
          async () => (await session.openBlob(l)).body,
          this.progressLog(l),
          (chunk) => {
            if (cancelled || signal.aborted) throw new PodvisorError('cancelled', 'pull aborted');
            tapped = true;
            return ch.push(chunk); // a no-op once the reader is gone: the digest is still checked
          },
          // Every chunk went through the tap: the reader's input ends here, and its digest of
          // it is the blob's (undefined if the reader stopped: the store hashes the file).
          () => {
            ch.end();
            return inputDigest;
          },
        );
        if (fetched) this.opts.observe?.fetched(l.size);
      } finally {
        release();
      }
    })();
    download.then(
      () => {
        ch.end();
        this.log.debug({ layer: l.digest, index: i, tapped, doneMs: Date.now() - t0 }, 'layer downloaded');
      },
      (e) => ch.fail(e),
    );
    // The download's own bytes when it was tapped; else (stored already, or fetched by another
    // pull) the stored blob, once it is there.
    const input = (async function* () {
      yield* ch;
      if (!tapped) yield* createReadStream(file, { highWaterMark: 1 << 20 });
    })();
    // Network chunks are still being written to the blob file: not ours to give away.
    const applying = builder.applyLayer(input, { index: i, diffId, label: l.digest, inputDigest: setInputDigest, size: l.size });
    applying.catch((e) => {
      ch.close(); // a reader that stopped never drains the channel
      // When this layer's own bytes were refused, the download goes on so that the error can
      // say whether they were corrupted on the way (DATA_LOSS) or really are what the
      // registry serves; when the build failed elsewhere, it stops.
      if (e instanceof BuildFailedError) cancelled = true;
    });
    const [a, d] = await Promise.allSettled([applying, download]);
    layerOutcome(l, a.status === 'rejected' ? a.reason : undefined, d.status === 'rejected' ? d.reason : undefined);
    this.log.debug({ layer: l.digest, index: i, tapped, doneMs: Date.now() - t0 }, 'layer applied');
  }

  /**
   * The fast path for a layer not stored yet: a layer worker downloads the blob itself into
   * the content store's temp file and reads it as it arrives (layer-fetch.ts); this thread
   * only checks and stores the result. False when it does not apply (no workers, the blob is
   * stored or being stored, no endpoint answered yet) or when the worker could not start the
   * download (an answer other than 200, no connection): layerJob then fetches it here, with
   * endpoint fail-over and auth challenges.
   */
  private async remoteLayer(session: RepositorySession, l: Descriptor, i: number, diffId: string, builder: ImageBuilder, signal: AbortSignal, slot: () => Promise<() => void>, t0: number): Promise<boolean> {
    const source = builder.workers ? session.blobSource(l) : undefined;
    if (!source) return false;
    const release = await slot();
    let staged: StagedBlob | undefined;
    try {
      if (signal.aborted) throw new PodvisorError('cancelled', 'pull aborted');
      staged = await this.content.stage(l);
    } finally {
      if (!staged) release();
    }
    if (!staged) return false;
    let fetched!: (o: FetchOutcome) => void;
    const outcome = new Promise<FetchOutcome>((r) => (fetched = r));
    const progress = this.progressLog(l);
    const applying = builder.applyLayer(null, {
      index: i,
      diffId,
      label: l.digest,
      remote: {
        blob: { source, digest: l.digest, size: l.size, fd: staged.fd },
        onFetched: fetched,
        onProgress: progress && ((n) => progress(n, l.size)),
        signals: session.signal ? [signal, session.signal] : [signal],
      },
    });
    // The outcome comes before applyLayer settles, unless the worker never started (the build had failed).
    const applied = applying.then(() => undefined, (e) => e ?? new Error('layer failed'));
    const o = await Promise.race([outcome, applied.then(() => ({ ok: false, fallback: false, code: 'CANCELLED', message: 'pull aborted' }) as FetchOutcome)]);
    let downloadErr: unknown;
    try {
      if (o.ok) {
        await staged.commit(o.bytes, async () => o.digest);
        this.opts.observe?.fetched(o.bytes);
      } else await staged.discard();
    } catch (e) {
      downloadErr = e;
    } finally {
      release();
    }
    if (!o.ok && o.fallback) {
      await applied;
      this.log.debug({ layer: l.digest, reason: o.message }, 'layer worker could not fetch the blob: fetching it here');
      return false;
    }
    if (!o.ok) downloadErr = new PodvisorError(o.code === 'DATA_LOSS' ? 'data_loss' : o.code === 'CANCELLED' ? 'cancelled' : 'unavailable', o.message);
    else this.log.debug({ layer: l.digest, index: i, fetchedBy: 'worker', doneMs: Date.now() - t0 }, 'layer downloaded');
    layerOutcome(l, await applied, downloadErr);
    this.log.debug({ layer: l.digest, index: i, doneMs: Date.now() - t0 }, 'layer applied');
    return true;
  }

  /** Logs a large blob's download every 10%. */
  private progressLog(l: Descriptor): Progress | undefined {
    if (l.size < PROGRESS_MIN_BYTES) return undefined;
    let lastPct = -1;
    return (done, total) => {
      const pct = Math.floor((done * 100) / total / 10) * 10;
      if (pct !== lastPct) {
        lastPct = pct;
        this.log.info({ blob: l.digest, pct, bytes: done, total }, 'downloading layer');
      }
    };
  }
}

/**
 * Throws what a layer's failure means to the pull. The download's error wins (corrupted on
 * the way: DATA_LOSS; interrupted: UNAVAILABLE) unless it only stopped because the build did.
 */
function layerOutcome(l: Descriptor, applyErr: unknown, downloadErr: unknown): void {
  const cancel = downloadErr instanceof PodvisorError && downloadErr.code === 'cancelled';
  const e = downloadErr !== undefined && !cancel ? downloadErr : applyErr ?? downloadErr;
  if (e === undefined) return;
  if (e instanceof BuildFailedError) throw e;
  if (e instanceof UnsafeArchiveError) throw new PodvisorError('failed_precondition', `layer ${l.digest} refused: ${e.message}`);
  if (e instanceof PodvisorError) throw e;
  throw internal(`applying layer ${l.digest}: ${(e as any)?.message ?? e}`);
}
