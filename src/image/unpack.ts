// Applies image layers (tar, gzip or zstd) in order and builds the image's erofs file from
// them directly: file contents stream into the image as they are read, the tree lives in
// memory, and erofs.ts lays out the metadata at the end. OCI whiteouts (`.wh.` files, opaque
// dirs), ownership, modes, times, xattrs, symlinks, hard links and device nodes are kept.
//
// Layers are read concurrently (each as it downloads: decompression runs on libuv's threads,
// file data goes to extents of the image allocated as entries arrive), and each layer's
// changes to the tree are recorded, then replayed strictly in layer order once the layer's
// diff_id has been verified. So nothing unverified ever reaches the tree, and a layer's data
// never waits for the layers below it.
//
// Path safety is written here by hand (no library does it the way we need). Layers are hostile
// input; since the tree is a model, nothing on the host is ever created from an entry name,
// and the image's own namespace is kept the way a chroot would keep it:
//  - entry names are cleaned lexically: a leading '/' is dropped (neutralized), a '..' that
//    would climb above the root refuses the layer;
//  - every parent directory is resolved inside the root, following symlinks the way a chroot
//    would (an absolute target restarts at the root, '..' stops at the root) — so
//    `evil -> /etc` then `evil/passwd` lands in the image's /etc/passwd;
//  - the final component is never followed: an existing entry is replaced;
//  - hard-link targets get the same treatment, must already exist and must not be directories;
//  - entry counts, single entry sizes, total bytes, metadata records and xattrs are capped
//    (tar bombs, absurd headers).
// xattrs: user.* (regular files and directories only, as Linux allows), trusted.* and
// security.* are kept (security.capability included, bytes exact). overlayfs' own
// trusted.overlay.* / user.overlay.* are dropped: the guest stacks an overlay on this image and
// an image must not steer it (opaque, redirect, metacopy). Other namespaces (system.* ACLs)
// are dropped with a warning.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { spawn } from 'node:child_process';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import type { Logger } from '../util/log';
import type { FetchOutcome, RemoteBlob } from './layer-fetch';
import { readOnWorker, layerWorkersEnabled, type RemoteRead } from './layer-pool';
import type { LayerRead, Op, UnpackLimits } from './layer-types';

export type { LayerRead, Op, UnpackLimits } from './layer-types';
import { BLOCK_SIZE, BlockCounter, DeviceNode, DirNode, EROFS_NAME_MAX, ErofsImage, FileNode, Stager, SymlinkNode, XATTR_NAME_MAX, XATTR_PREFIXES, XATTR_VALUE_MAX, xattrBodySize, type Node } from './erofs';
import { TarFormatError, TarParser, type TarHandler, type TarHeader } from './tar';

export class UnsafeArchiveError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UnsafeArchiveError';
  }
}

/** A layer stopped because the build failed elsewhere (another layer, abort()); `reason` is why. */
export class BuildFailedError extends Error {
  constructor(readonly reason: Error) {
    super(reason.message);
    this.name = 'BuildFailedError';
  }
}

/** A layer worker could not start its own download (layer-fetch.ts): fetch it another way. */
export class FetchFallbackError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FetchFallbackError';
  }
}

export const DEFAULT_LIMITS: UnpackLimits = {
  maxEntries: 2_000_000,
  maxEntryBytes: 64 * 2 ** 30,
  maxTotalBytes: 256 * 2 ** 30,
  maxMetadataBytes: 1 * 2 ** 30,
};

/** Per-inode xattr caps (Linux: XATTR_NAME_MAX 255, values ≤ 64 KiB). */
export const MAX_XATTRS_PER_ENTRY = 128;
export const MAX_XATTR_BYTES_PER_ENTRY = 64 * 1024;
/** File tails kept in memory to be stored inline (after that, tails take a data block). */
const INLINE_BUDGET = 64 << 20;
/** Largest PAX / GNU long-name record. */
const MAX_META_RECORD = 1 << 20;
/** Names of dropped xattrs a layer reports (the rest are only counted). */
const MAX_DROPPED_NAMES = 20;
const PATH_MAX = 4096;

const WHITEOUT = '.wh.';
const OPAQUE = '.wh..wh..opq';
const MAX_SYMLINK_HOPS = 40;

/** An entry name (latin1 byte string) for messages. */
function show(s: string): string {
  return JSON.stringify(Buffer.from(s, 'latin1').toString('utf8'));
}

/**
 * Cleans a tar entry name to a root-relative path ('' is the root itself). Leading '/' and
 * '.' components are dropped; '..' is resolved lexically and refused if it leaves the root.
 */
export function cleanEntryPath(name: string): string {
  if (name.includes('\0')) throw new UnsafeArchiveError(`entry name contains NUL: ${show(name)}`);
  const out: string[] = [];
  for (const c of name.split('/')) {
    if (c === '' || c === '.') continue;
    if (c === '..') {
      if (out.length === 0) throw new UnsafeArchiveError(`entry escapes the root: ${show(name)}`);
      out.pop();
      continue;
    }
    out.push(c);
  }
  return out.join('/');
}

type Compression = 'gzip' | 'zstd' | 'none';

/** Sniffs the compression of a layer from its first bytes (media types lie sometimes). */
function sniff(b: Buffer): Compression {
  if (b.length >= 2 && b[0] === 0x1f && b[1] === 0x8b) return 'gzip';
  if (b.length >= 4 && b.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
  return 'none';
}

/** The stream's bytes, with the first (at least 4, unless shorter) read ahead for sniffing. */
async function peek(input: AsyncIterable<Buffer>): Promise<{ head: Buffer; rest: AsyncIterable<Buffer> }> {
  const it = input[Symbol.asyncIterator]();
  const got: Buffer[] = [];
  let n = 0;
  let done = false;
  while (n < 4) {
    const r = await it.next();
    if (r.done) {
      done = true;
      break;
    }
    got.push(r.value);
    n += r.value.length;
  }
  const head = Buffer.concat(got);
  const rest = (async function* () {
    try {
      if (head.length) yield head;
      if (done) return;
      for (;;) {
        const r = await it.next();
        if (r.done) return;
        yield r.value;
      }
    } finally {
      if (!done) await it.return?.(); // closes the source when reading stops early
    }
  })();
  return { head, rest };
}

/** Where the data of the regular file being read goes. */
interface Sink {
  node: FileNode | null; // null: discard (whiteout bodies, the root as a file …)
  /** Bytes still to send to the data area (full blocks, plus the tail when not inline). */
  toData: number;
  tailFill: number;
}

// Cells of the image's shared counters (BigInt64Array; cell 0 is erofs.ts' block counter).
const ENTRIES = 1;
const TOTAL_BYTES = 2;
const META_BYTES = 3;
const INLINE_BYTES = 4;
const FAILED = 5;
export const BUDGET_CELLS = 8;
const CELLS = BUDGET_CELLS;

/**
 * The image-wide limits and counters, in shared memory so that the layer readers on worker
 * threads (layer-pool.ts) and the replay on the main thread count against the same budget.
 */
export class SharedBudget {
  constructor(
    readonly cells: BigInt64Array,
    readonly limits: UnpackLimits,
  ) {
    if (cells.length < CELLS) throw new Error('SharedBudget: too few cells');
  }

  private add(cell: number, n: number): number {
    return Number(Atomics.add(this.cells, cell, BigInt(n))) + n;
  }

  private get(cell: number): number {
    return Number(Atomics.load(this.cells, cell));
  }

  get entries(): number {
    return this.get(ENTRIES);
  }

  get totalBytes(): number {
    return this.get(TOTAL_BYTES);
  }

  /** One more entry; refuses the layer past maxEntries. */
  entry(label: string): void {
    if (this.add(ENTRIES, 1) > this.limits.maxEntries) throw new UnsafeArchiveError(`layer ${label}: more than ${this.limits.maxEntries} entries`);
  }

  /** `size` more bytes of file data; refuses the layer past maxTotalBytes. */
  fileBytes(size: number, label: string): void {
    if (this.add(TOTAL_BYTES, size) > this.limits.maxTotalBytes) throw new UnsafeArchiveError(`layer ${label}: more than ${this.limits.maxTotalBytes} bytes of files`);
  }

  /** Names, link targets and xattrs held in memory, against maxMetadataBytes. */
  account(bytes: number, label: string): void {
    if (this.add(META_BYTES, bytes) > this.limits.maxMetadataBytes)
      throw new UnsafeArchiveError(`layer ${label}: more than ${this.limits.maxMetadataBytes} bytes of names, link targets and xattrs`);
  }

  /** Takes `n` bytes of the in-memory budget for inline tails, if there is room. */
  takeInline(n: number): boolean {
    if (this.add(INLINE_BYTES, n) <= INLINE_BUDGET) return true;
    this.add(INLINE_BYTES, -n);
    return false;
  }

  /** The build failed (on any thread): readers stop at their next chunk. */
  setFailed(): void {
    Atomics.store(this.cells, FAILED, 1n);
  }

  get failed(): boolean {
    return Atomics.load(this.cells, FAILED) !== 0n;
  }
}

/**
 * Reads one layer (gzip, zstd or plain tar, sniffed) from `input`: checks and hashes it
 * (diff_id), writes file data through `stager`, records the entries. `check` is called per
 * chunk and throws when the build failed elsewhere. Runs on the main thread or on a worker
 * (layer-pool.ts). The whole input is read (padding after the tar end marker too), so the
 * diff_id covers every byte.
 */
export async function readLayerStream(input: AsyncIterable<Buffer>, diffId: string | undefined, label: string, budget: SharedBudget, stager: Stager, check: () => void): Promise<LayerRead> {
  const { head, rest } = await peek(input);
  const kind = sniff(head);
  let tar: AsyncIterable<Buffer>;
  let feeding: Promise<void> = Promise.resolve();
  let child: ReturnType<typeof spawn> | undefined;
  let childDone: Promise<void> = Promise.resolve();
  const source = Readable.from(rest, { objectMode: false });
  if (kind === 'gzip') {
    const gunzip = createGunzip({ chunkSize: 1 << 20 });
    feeding = pipeline(source, gunzip).catch((e) => {
      gunzip.destroy(e);
    });
    tar = gunzip;
  } else if (kind === 'zstd') {
    // Node 20's zlib has no zstd; Debian's zstd CLI streams it.
    child = spawn('zstd', ['-dcq'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let err = '';
    child.stderr!.on('data', (d) => (err += d));
    childDone = new Promise((resolve, reject) => {
      child!.on('error', reject);
      child!.on('close', (code) => (code === 0 ? resolve() : reject(new UnsafeArchiveError(`layer ${label}: zstd -d failed (${code}): ${err.trim()}`))));
    });
    childDone.catch(() => undefined);
    const out = child.stdout!;
    feeding = pipeline(source, child.stdin!).catch((e) => {
      out.destroy(e);
    });
    tar = out;
  } else {
    tar = source;
  }
  const reader = new LayerReader(budget, stager, label);
  const hash = diffId ? createHash('sha256') : null;
  try {
    try {
      for await (const chunk of tar) {
        hash?.update(chunk);
        reader.parser.write(chunk);
        if (stager.busy) await stager.drain();
        check();
      }
      reader.parser.finish();
      await feeding;
      await childDone;
    } finally {
      await stager.close();
    }
  } catch (e: any) {
    source.destroy();
    child?.kill();
    // The layer's fault (bad tar, bad compression) refuses it; I/O errors stay what they are.
    if (e instanceof TarFormatError || String(e?.code).startsWith('Z_')) throw new UnsafeArchiveError(`layer ${label}: ${e?.message ?? e}`);
    throw e;
  }
  if (hash && diffId) {
    const got = `sha256:${hash.digest('hex')}`;
    if (got !== diffId) throw new UnsafeArchiveError(`layer ${label}: uncompressed content ${got} does not match diff_id ${diffId}`);
  }
  return { ops: reader.ops, droppedXattrs: [...reader.droppedXattrs], droppedXattrCount: reader.droppedXattrCount, skipped: reader.skipped };
}


export interface LayerOptions {
  /** Position of the layer in the image (0 = bottom); defaults to the order of the calls. */
  index?: number;
  /** sha256 of the uncompressed layer (config rootfs.diff_ids); checked before it is applied. */
  diffId?: string;
  label?: string;
  /**
   * The input's chunks belong to this call (nothing else reads or reuses them): they are
   * handed to the worker thread without a copy. Otherwise they are copied.
   */
  owned?: boolean;
  /**
   * Asks for the sha256 of the raw input (the compressed blob, every byte the call read):
   * called once, with 'sha256:<hex>' when the input ended, or with undefined when reading
   * stopped before (the layer was refused, the build failed).
   */
  inputDigest?: (digest: string | undefined) => void;
  /** The input's size in bytes, when known: layers are spread over the worker threads by size. */
  size?: number;
  /**
   * No input: a worker downloads the blob itself (into `blob.fd`) and reads it as it comes.
   * `onFetched` gets the download's outcome before applyLayer settles. When the worker could
   * not start the download (FetchOutcome `fallback`), applyLayer rejects with
   * FetchFallbackError without failing the build: the layer can be applied again from an
   * input. Each signal aborts the download.
   */
  remote?: { blob: RemoteBlob; onFetched: (o: FetchOutcome) => void; onProgress?: (bytes: number) => void; signals: AbortSignal[] };
}

/**
 * Builds one image: create() it, apply each layer (applyLayer/applyLayerFile/applyTarStream;
 * concurrently with explicit indexes, or one after the other), then commit() (or abort()).
 */
export class ImageBuilder {
  readonly root: DirNode;
  readonly budget: SharedBudget;
  readonly now = Math.floor(Date.now() / 1000);
  /** Names created or replaced by the layer being replayed, per directory (opaque dirs keep those). */
  private touched = new Map<DirNode, Set<string>>();
  private label = 'layer';
  private nextIndex = 0;
  private applied = 0;
  private turnWaiters = new Map<number, () => void>();
  private failed: Error | null = null;
  private readonly failedWaiters = new Set<(e: Error) => void>();

  /** Layer reads in flight on worker threads (they write to the image's descriptor). */
  private readonly remote = new Set<RemoteRead>();

  private constructor(
    readonly image: ErofsImage,
    readonly logger: Logger,
    readonly limits: UnpackLimits,
    readonly workers: boolean,
  ) {
    this.root = new DirNode(0o755, 0, 0, this.now, 0, null);
    this.budget = new SharedBudget(image.file.blocks.cells, limits);
  }

  /**
   * Starts an image that commit() will move to `out` (a temp file next to it until then).
   * Layers are read on worker threads (layer-pool.ts) unless `opts.workers` is false.
   */
  static async create(out: string, logger: Logger, limits: Partial<UnpackLimits> = {}, opts: { workers?: boolean } = {}): Promise<ImageBuilder> {
    const image = await ErofsImage.create(out, BlockCounter.create(CELLS));
    return new ImageBuilder(image, logger, { ...DEFAULT_LIMITS, ...limits }, opts.workers ?? layerWorkersEnabled());
  }

  get entries(): number {
    return this.budget.entries;
  }

  get totalBytes(): number {
    return this.budget.totalBytes;
  }

  /** Applies a layer file (compression sniffed). */
  async applyLayerFile(file: string, diffId?: string, label = file): Promise<void> {
    return this.applyLayer(createReadStream(file, { highWaterMark: 1 << 20 }), { diffId, label, owned: true });
  }

  /** Applies one (uncompressed) tar stream. */
  async applyTarStream(stream: AsyncIterable<Buffer>, label?: string): Promise<void> {
    return this.applyLayer(stream, { label });
  }

  /**
   * Reads a layer (gzip, zstd or plain tar, sniffed) from `input` — as fast as it comes, in
   * parallel with other layers — then, once every layer below it is applied and its diff_id
   * verified, applies its changes to the tree. The whole input is read (padding after the
   * tar end marker too), so the diff_id covers every byte. Any failure fails the builder:
   * other layers waiting for their turn are rejected too.
   */
  async applyLayer(input: AsyncIterable<Buffer> | null, opts: LayerOptions = {}): Promise<void> {
    const index = opts.index ?? this.nextIndex++;
    const label = opts.label ?? String(index);
    try {
      this.check();
      const ops = await this.readLayer(input, opts.diffId, label, opts.owned ?? false, opts.inputDigest, opts.remote, opts.size);
      await this.turn(index);
      this.replay(ops, label);
      this.applied++;
      this.turnWaiters.get(this.applied)?.();
    } catch (e: any) {
      if (!(e instanceof BuildFailedError) && !(e instanceof FetchFallbackError)) this.fail(e);
      throw e;
    }
  }

  /** Writes the image's metadata, syncs it and moves it into place. */
  async commit(): Promise<{ bytes: number; inodes: number; metadataMs: number; syncMs: number }> {
    this.check();
    return this.image.commit(this.root, { buildTime: this.now });
  }

  async abort(): Promise<void> {
    this.fail(new Error('image build aborted'));
    // Workers write through the image's descriptor: it stays open until they are done.
    await Promise.allSettled([...this.remote].map((j) => j.result));
    await this.image.abort();
  }

  // ---- reading -------------------------------------------------------------------------

  private check(): void {
    if (this.failed) throw new BuildFailedError(this.failed);
  }

  private fail(e: Error): void {
    if (this.failed) return;
    this.failed = e;
    this.budget.setFailed();
    for (const j of this.remote) j.abort(e.message);
    for (const w of this.failedWaiters) w(e);
  }

  private turn(index: number): Promise<void> {
    this.check();
    if (this.applied === index) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const onFail = (e: Error) => {
        this.turnWaiters.delete(index);
        reject(new BuildFailedError(e));
      };
      this.failedWaiters.add(onFail);
      this.turnWaiters.set(index, () => {
        this.turnWaiters.delete(index);
        this.failedWaiters.delete(onFail);
        resolve();
      });
    });
  }

  private async readLayer(
    input: AsyncIterable<Buffer> | null,
    diffId: string | undefined,
    label: string,
    owned: boolean,
    inputDigest?: (d: string | undefined) => void,
    remote?: LayerOptions['remote'],
    size?: number,
  ): Promise<Op[]> {
    let r: LayerRead;
    if (!input && !(remote && this.workers)) throw new Error('applyLayer: no input (a remote layer needs the worker threads)');
    if (this.workers) {
      const fetch = remote ? { fetch: remote.blob, onFetched: remote.onFetched, onProgress: remote.onProgress } : {};
      const job = readOnWorker(remote ? null : input, { fd: this.image.fh.fd, cells: this.budget.cells, limits: this.limits, diffId, label, owned, size, inputDigest, ...fetch });
      this.remote.add(job);
      if (this.failed) job.abort(this.failed.message);
      const cancel = () => job.abort('pull aborted', true);
      for (const s of remote?.signals ?? []) {
        if (s.aborted) cancel();
        else s.addEventListener('abort', cancel, { once: true });
      }
      try {
        r = await job.result;
      } catch (e: any) {
        if (e?.name === 'BuildFailedError') throw new BuildFailedError(this.failed ?? e);
        if (e?.name === 'UnsafeArchiveError') throw new UnsafeArchiveError(e.message);
        if (e?.name === 'FetchFallbackError') throw new FetchFallbackError(e.message);
        throw e;
      } finally {
        this.remote.delete(job);
        for (const s of remote?.signals ?? []) s.removeEventListener('abort', cancel);
      }
    } else {
      let report = inputDigest;
      if (report) {
        const h = createHash('sha256');
        const src = input!;
        input = (async function* () {
          for await (const c of src) {
            h.update(c);
            yield c;
          }
          const f = report;
          report = undefined;
          f?.(`sha256:${h.digest('hex')}`);
        })();
      }
      try {
        r = await readLayerStream(input!, diffId, label, this.budget, new Stager(this.image.file), () => this.check());
      } finally {
        report?.(undefined);
      }
    }
    for (const s of r.skipped) this.logger.debug({ layer: label, ...s }, 'skipping unsupported tar entry type');
    if (r.droppedXattrs.length) this.logger.warn({ layer: label, xattrs: r.droppedXattrs, count: r.droppedXattrCount }, 'xattrs dropped (namespace not allowed in images)');
    return r.ops;
  }

  /** Counts names, link targets and xattrs against the image's metadata budget. */
  account(bytes: number, label: string): void {
    this.budget.account(bytes, label);
  }

  // ---- applying ------------------------------------------------------------------------

  private replay(ops: Op[], label: string): void {
    this.label = label;
    this.touched = new Map();
    for (const op of ops) this.apply(op);
  }

  private apply(op: Op): void {
    const { h, rel } = op;
    const label = this.label;
    const slash = rel.lastIndexOf('/');
    const base = slash < 0 ? rel : rel.slice(slash + 1);
    const parentParts = slash < 0 ? [] : rel.slice(0, slash).split('/');

    // Whiteouts: remove from lower layers, never materialize.
    if (base === OPAQUE) {
      this.makeOpaque(this.walk(parentParts, 'create-or-skip'));
      return;
    }
    if (base.startsWith(WHITEOUT)) {
      const victim = base.slice(WHITEOUT.length);
      if (!victim.startsWith('.wh.') && victim && victim !== '.' && victim !== '..') {
        // AUFS metadata (.wh..wh.plnk …) is ignored
        this.walk(parentParts, 'lookup')?.children.delete(victim);
      }
      return;
    }
    if (rel === '') {
      // The root itself ('./'): only its metadata.
      if (h.type === 'dir') this.setMeta(this.root, op);
      return;
    }
    if (h.type === 'other') return;

    // A hard link's target is looked up before anything at its own name is replaced.
    let linked: Node | undefined;
    if (h.type === 'link') {
      const linkRel = cleanEntryPath(h.linkname);
      if (linkRel === '') throw new UnsafeArchiveError(`layer ${label}: hard link ${show(h.name)} to the root`);
      const ls = linkRel.lastIndexOf('/');
      const dir = this.walk(ls < 0 ? [] : linkRel.slice(0, ls).split('/'), 'lookup');
      linked = dir?.children.get(ls < 0 ? linkRel : linkRel.slice(ls + 1));
      if (!linked) throw new UnsafeArchiveError(`layer ${label}: hard link ${show(h.name)} to missing ${show(h.linkname)}`);
      if (linked.kind === 'dir') throw new UnsafeArchiveError(`layer ${label}: hard link ${show(h.name)} to a directory`);
    }

    const parent = this.walk(parentParts, 'create')!;
    const existing = parent.children.get(base);
    this.touch(parent, base);
    switch (h.type) {
      case 'dir':
        if (existing?.kind === 'dir') {
          this.setMeta(existing, op);
        } else {
          const d = new DirNode(0o755, 0, 0, this.now, 0, null);
          this.setMeta(d, op);
          parent.children.set(base, d);
        }
        return;
      case 'file':
        parent.children.set(base, op.file!);
        return;
      case 'symlink':
        // The link text is data, interpreted later inside the container's root: it is only
        // ever followed by walk(), which keeps it inside.
        parent.children.set(base, new SymlinkNode(h.linkname, h.uid, h.gid, h.mtime, h.mtimeNsec, op.xattrs));
        return;
      case 'link':
        parent.children.set(base, linked!);
        return;
      case 'char':
      case 'block':
      case 'fifo': {
        const kind = h.type === 'char' ? 'chr' : h.type === 'block' ? 'blk' : 'fifo';
        const dev = kind !== 'fifo';
        parent.children.set(base, new DeviceNode(kind, dev ? h.devmajor : 0, dev ? h.devminor : 0, h.mode, h.uid, h.gid, h.mtime, h.mtimeNsec, op.xattrs));
        return;
      }
    }
  }

  private touch(dir: DirNode, name: string): void {
    let s = this.touched.get(dir);
    if (!s) this.touched.set(dir, (s = new Set()));
    s.add(name);
  }

  /**
   * Resolves directory components from the root the way a chroot would: symlinks are
   * followed (an absolute target restarts at the root), '..' never leaves the root. Missing
   * directories are created unless `mode` is 'lookup' (then null is returned); a
   * non-directory in the way refuses the entry in 'create' mode and yields null otherwise.
   */
  private walk(parts: string[], mode: 'lookup' | 'create' | 'create-or-skip'): DirNode | null {
    const create = mode !== 'lookup';
    const stack: DirNode[] = [this.root];
    let todo = parts;
    let hops = 0;
    for (let i = 0; i < todo.length; i++) {
      const c = todo[i];
      if (c === '' || c === '.') continue;
      if (c === '..') {
        if (stack.length > 1) stack.pop();
        continue;
      }
      const cur = stack[stack.length - 1];
      const child = cur.children.get(c);
      if (child === undefined) {
        if (!create) return null;
        if (c.length > EROFS_NAME_MAX) throw new UnsafeArchiveError(`layer ${this.label}: name longer than ${EROFS_NAME_MAX} bytes: ${show(c)}`);
        this.account(c.length, this.label);
        const d = new DirNode(0o755, 0, 0, this.now, 0, null);
        cur.children.set(c, d);
        this.touch(cur, c);
        stack.push(d);
        continue;
      }
      if (child.kind === 'dir') {
        stack.push(child);
        continue;
      }
      if (child.kind === 'symlink') {
        if (++hops > MAX_SYMLINK_HOPS) throw new UnsafeArchiveError(`layer ${this.label}: too many symlinks resolving ${show(parts.join('/'))}`);
        if (child.target.startsWith('/')) stack.length = 1;
        todo = [...child.target.split('/'), ...todo.slice(i + 1)];
        i = -1;
        continue;
      }
      if (mode !== 'create') return null;
      throw new UnsafeArchiveError(`layer ${this.label}: parent ${show(parts.join('/'))} is not a directory`);
    }
    return stack[stack.length - 1];
  }

  /** An opaque directory hides everything lower layers put in it. */
  private makeOpaque(dir: DirNode | null): void {
    if (!dir) return;
    const keep = this.touched.get(dir);
    for (const name of [...dir.children.keys()]) if (!keep?.has(name)) dir.children.delete(name);
  }

  private setMeta(n: DirNode, op: Op): void {
    const h = op.h;
    n.mode = h.mode & 0o7777;
    n.uid = h.uid;
    n.gid = h.gid;
    n.mtime = h.mtime;
    n.mtimeNsec = h.mtimeNsec;
    // Like containerd, a directory entry over an existing directory adds its xattrs to the
    // ones lower layers set (image differs often write only some, e.g. security.capability).
    const x = op.xattrs;
    if (x && n.xattrs) {
      for (const [k, v] of x) n.xattrs.set(k, v);
      if (n.xattrs.size > MAX_XATTRS_PER_ENTRY || xattrBodySize(n.xattrs) > MAX_XATTR_BYTES_PER_ENTRY)
        throw new UnsafeArchiveError(`layer ${this.label}: ${show(h.name)}: more than ${MAX_XATTRS_PER_ENTRY} xattrs or ${MAX_XATTR_BYTES_PER_ENTRY} bytes of them`);
    } else if (x) {
      n.xattrs = new Map(x);
    }
    if (n === this.root && xattrBodySize(n.xattrs) > BLOCK_SIZE - 1152 - 64)
      throw new UnsafeArchiveError(`layer ${this.label}: xattrs of the root directory are too large`);
  }
}

/**
 * Reads one layer's tar stream: checks every entry (limits, names, link targets, device
 * numbers, xattrs), writes regular files' data into the image, and records the entries
 * for the replay.
 */
class LayerReader implements TarHandler {
  readonly ops: Op[] = [];
  readonly parser: TarParser;
  /** names of dropped xattrs, for the log: the first MAX_DROPPED_NAMES (droppedXattrCount counts all) */
  readonly droppedXattrs = new Set<string>();
  droppedXattrCount = 0;
  readonly skipped: { entry: string; typeflag: string }[] = [];
  private sink: Sink | null = null;

  constructor(
    private readonly b: SharedBudget,
    readonly stager: Stager,
    private readonly label: string,
  ) {
    this.parser = new TarParser(this, { maxMetaBytes: MAX_META_RECORD, maxXattrValue: XATTR_VALUE_MAX, maxXattrs: MAX_XATTRS_PER_ENTRY });
  }

  entry(h: TarHeader): void {
    try {
      this.readEntry(h);
    } finally {
      h.xattrs = null; // ops keep the header; only op.xattrs (checked, accounted) may stay
    }
  }

  private readEntry(h: TarHeader): void {
    const b = this.b;
    const label = this.label;
    const limits = b.limits;
    b.entry(label);
    const size = h.size;
    if (!Number.isSafeInteger(size) || size < 0 || size > limits.maxEntryBytes) throw new UnsafeArchiveError(`layer ${label}: entry ${show(h.name)} has an absurd size ${size}`);
    b.fileBytes(size, label);
    if (h.uid > 0xffffffff || h.gid > 0xffffffff) throw new UnsafeArchiveError(`layer ${label}: ${show(h.name)}: uid/gid out of range`);
    this.sink = null;

    const rel = cleanEntryPath(h.name);
    b.account(rel.length + h.linkname.length, label);
    const base = rel.slice(rel.lastIndexOf('/') + 1);
    const op: Op = { h, rel, file: null, xattrs: null };
    if (rel === '' || base.startsWith(WHITEOUT) || h.type === 'other') {
      if (h.type === 'other' && this.skipped.length < 100) this.skipped.push({ entry: show(h.name), typeflag: h.typeflag });
      if (rel === '' && h.type === 'dir') op.xattrs = this.xattrsFor(h, 'dir');
      this.ops.push(op);
      if (h.type === 'file') this.sink = { node: null, toData: 0, tailFill: 0 };
      return;
    }
    if (base.length > EROFS_NAME_MAX) throw new UnsafeArchiveError(`layer ${label}: name longer than ${EROFS_NAME_MAX} bytes: ${show(h.name)}`);
    switch (h.type) {
      case 'symlink':
        if (!h.linkname || h.linkname.includes('\0')) throw new UnsafeArchiveError(`layer ${label}: bad symlink ${show(h.name)}`);
        if (h.linkname.length >= PATH_MAX) throw new UnsafeArchiveError(`layer ${label}: symlink ${show(h.name)} target longer than ${PATH_MAX - 1} bytes`);
        op.xattrs = this.xattrsFor(h, 'symlink');
        break;
      case 'char':
      case 'block':
        if (!Number.isSafeInteger(h.devmajor) || !Number.isSafeInteger(h.devminor) || h.devmajor < 0 || h.devminor < 0 || h.devmajor > 0xfff || h.devminor > 0xfffff)
          throw new UnsafeArchiveError(`layer ${label}: device ${show(h.name)} has an invalid number ${h.devmajor}:${h.devminor}`);
        op.xattrs = this.xattrsFor(h, 'node');
        break;
      case 'fifo':
        op.xattrs = this.xattrsFor(h, 'node');
        break;
      case 'dir':
        op.xattrs = this.xattrsFor(h, 'dir');
        break;
      case 'file': {
        const f = new FileNode(h.mode, h.uid, h.gid, h.mtime, h.mtimeNsec, this.xattrsFor(h, 'file'));
        f.size = size;
        const tail = size % BLOCK_SIZE;
        const full = size - tail;
        const inline = tail > 0 && 64 + xattrBodySize(f.xattrs) + tail <= BLOCK_SIZE && b.takeInline(tail);
        if (inline) f.tail = Buffer.allocUnsafe(tail);
        const blocks = Math.ceil((inline ? full : size) / BLOCK_SIZE);
        f.blkaddr = blocks > 0 ? this.stager.begin(blocks) : 0;
        op.file = f;
        this.sink = { node: f, toData: inline ? full : size, tailFill: 0 };
        break;
      }
    }
    this.ops.push(op);
  }

  data(chunk: Buffer): void {
    const s = this.sink;
    if (!s?.node) return;
    let off = 0;
    if (s.toData > 0) {
      const n = Math.min(s.toData, chunk.length);
      this.stager.write(n === chunk.length ? chunk : chunk.subarray(0, n));
      s.toData -= n;
      off = n;
    }
    if (off < chunk.length) {
      chunk.copy(s.node.tail!, s.tailFill, off);
      s.tailFill += chunk.length - off;
    }
  }

  end(): void {
    this.sink = null;
  }

  /** The entry's xattrs that an image may carry; refuses absurd ones. */
  private xattrsFor(h: TarHeader, kind: 'file' | 'dir' | 'symlink' | 'node'): Map<string, Buffer> | null {
    if (!h.xattrs) return null;
    const out = new Map<string, Buffer>();
    let bytes = 12;
    for (const [name, value] of h.xattrs) {
      if (name.length > XATTR_NAME_MAX || name.includes('\0'))
        throw new UnsafeArchiveError(`layer ${this.label}: ${show(h.name)}: invalid xattr name ${show(name.slice(0, 64))}`);
      if (value.length > XATTR_VALUE_MAX) throw new UnsafeArchiveError(`layer ${this.label}: ${show(h.name)}: xattr ${show(name)} value of ${value.length} bytes`);
      const prefix = XATTR_PREFIXES.find(([p]) => name.startsWith(p));
      const overlay = name.startsWith('trusted.overlay.') || name.startsWith('user.overlay.');
      if (!prefix || name.length === prefix[0].length || overlay || (prefix[0] === 'user.' && kind !== 'file' && kind !== 'dir')) {
        this.droppedXattrCount++;
        if (this.droppedXattrs.size < MAX_DROPPED_NAMES) this.droppedXattrs.add(name);
        continue;
      }
      out.set(name, value);
      bytes += (4 + name.length - prefix[0].length + value.length + 3) & ~3;
      if (out.size > MAX_XATTRS_PER_ENTRY || bytes > MAX_XATTR_BYTES_PER_ENTRY)
        throw new UnsafeArchiveError(`layer ${this.label}: ${show(h.name)}: more than ${MAX_XATTRS_PER_ENTRY} xattrs or ${MAX_XATTR_BYTES_PER_ENTRY} bytes of them`);
    }
    if (out.size === 0) return null;
    this.b.account(bytes, this.label);
    return out;
  }
}
