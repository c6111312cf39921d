// Applies image layers (tar, gzip or zstd) in order and builds the image's erofs file from
// them directly: file contents stream into the image as they are read, the tree lives in
// memory, and erofs.ts lays out the metadata at the end. OCI whiteouts (`.wh.` files, opaque
// dirs), ownership, modes, times, xattrs, symlinks, hard links and device nodes are kept.
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
import { promises as fsp, createReadStream } from 'node:fs';
import { spawn } from 'node:child_process';
import type { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import type { Logger } from '../log';
import { BLOCK_SIZE, DeviceNode, DirNode, EROFS_NAME_MAX, ErofsImage, FileNode, SymlinkNode, XATTR_NAME_MAX, XATTR_PREFIXES, XATTR_VALUE_MAX, xattrBodySize, type Node } from './erofs';
import { TarFormatError, TarParser, type TarHandler, type TarHeader } from './tar';

export class UnsafeArchiveError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UnsafeArchiveError';
  }
}

export interface UnpackLimits {
  maxEntries: number; // per image
  maxEntryBytes: number; // one file
  maxTotalBytes: number; // all layers, uncompressed file data
  /** Names, symlink targets and xattrs held in memory for the whole image. */
  maxMetadataBytes: number;
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

/** Sniffs the compression of a layer file from its magic bytes (media types lie sometimes). */
async function sniff(file: string): Promise<'gzip' | 'zstd' | 'none'> {
  const fh = await fsp.open(file, 'r');
  try {
    const b = Buffer.alloc(4);
    const { bytesRead } = await fh.read(b, 0, 4, 0);
    if (bytesRead >= 2 && b[0] === 0x1f && b[1] === 0x8b) return 'gzip';
    if (bytesRead >= 4 && b.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
    return 'none';
  } finally {
    await fh.close();
  }
}

/** Where the data of the regular file being read goes. */
interface Sink {
  node: FileNode | null; // null: discard (whiteout bodies, the root as a file …)
  /** Bytes still to send to the data area (full blocks, plus the tail when not inline). */
  toData: number;
  tailFill: number;
}

/**
 * Builds one image: create() it, applyLayerFile()/applyTarStream() each layer in order, then
 * commit() (or abort()).
 */
export class ImageBuilder implements TarHandler {
  readonly root: DirNode;
  private entries = 0;
  private totalBytes = 0;
  private metaBytes = 0;
  private inlineBytes = 0;
  private readonly now = Math.floor(Date.now() / 1000);
  /** Names created or replaced by the layer being applied, per directory (opaque dirs keep those). */
  private touched = new Map<DirNode, Set<string>>();
  private sink: Sink | null = null;
  private label = 'layer';
  private droppedXattrs = new Set<string>();

  private constructor(
    private readonly image: ErofsImage,
    private readonly logger: Logger,
    private readonly limits: UnpackLimits,
  ) {
    this.root = new DirNode(0o755, 0, 0, this.now, 0, null);
  }

  /** Starts an image that commit() will move to `out` (a temp file next to it until then). */
  static async create(out: string, logger: Logger, limits: Partial<UnpackLimits> = {}): Promise<ImageBuilder> {
    return new ImageBuilder(await ErofsImage.create(out), logger, { ...DEFAULT_LIMITS, ...limits });
  }

  /**
   * Applies a layer file (compression sniffed). When `diffId` is given, the uncompressed
   * stream must hash to it (the image config's rootfs.diff_ids).
   */
  async applyLayerFile(file: string, diffId?: string, label = file): Promise<void> {
    const kind = await sniff(file);
    let source: Readable;
    let child: ReturnType<typeof spawn> | undefined;
    let childDone: Promise<void> = Promise.resolve();
    if (kind === 'zstd') {
      // Node 20's zlib has no zstd; Debian's zstd CLI streams it.
      child = spawn('zstd', ['-dcq', '--', file], { stdio: ['ignore', 'pipe', 'pipe'] });
      let err = '';
      child.stderr!.on('data', (d) => (err += d));
      childDone = new Promise((resolve, reject) => {
        child!.on('error', reject);
        child!.on('close', (code) => (code === 0 ? resolve() : reject(new UnsafeArchiveError(`layer ${label}: zstd -d failed (${code}): ${err.trim()}`))));
      });
      childDone.catch(() => undefined);
      source = child.stdout!;
    } else {
      const raw = createReadStream(file, { highWaterMark: 1 << 20 });
      if (kind === 'gzip') {
        source = raw.pipe(createGunzip({ chunkSize: 256 << 10 }));
        raw.on('error', (e) => source.destroy(e));
      } else {
        source = raw;
      }
    }
    const hash = diffId ? createHash('sha256') : null;
    try {
      await this.applyTarStream(source, label, hash ? (c) => hash.update(c) : undefined);
      await childDone;
    } catch (e) {
      source.destroy();
      child?.kill();
      throw e;
    }
    if (hash && diffId) {
      const got = `sha256:${hash.digest('hex')}`;
      if (got !== diffId) throw new UnsafeArchiveError(`layer ${label}: uncompressed content ${got} does not match diff_id ${diffId}`);
    }
  }

  /**
   * Applies one uncompressed tar stream. The whole stream is read (padding after the end
   * marker too), so `onChunk` sees every byte (diff_id hashing).
   */
  async applyTarStream(stream: AsyncIterable<Buffer>, label = 'layer', onChunk?: (c: Buffer) => void): Promise<void> {
    this.label = label;
    this.touched = new Map();
    this.droppedXattrs = new Set();
    const parser = new TarParser(this, { maxMetaBytes: MAX_META_RECORD });
    const data = this.image.data;
    try {
      for await (const chunk of stream) {
        onChunk?.(chunk);
        parser.write(chunk);
        if (data.busy) await data.drain();
      }
      parser.finish();
    } catch (e: any) {
      (stream as Readable).destroy?.();
      // The layer's fault (bad tar, bad compression) refuses it; I/O errors stay what they are.
      if (e instanceof TarFormatError || String(e?.code).startsWith('Z_')) throw new UnsafeArchiveError(`layer ${label}: ${e?.message ?? e}`);
      throw e;
    } finally {
      this.sink = null;
    }
    if (this.droppedXattrs.size) this.logger.warn({ layer: label, xattrs: [...this.droppedXattrs].slice(0, 20) }, 'xattrs dropped (namespace not allowed in images)');
  }

  /** Writes the image's metadata, syncs it and moves it into place. */
  async commit(): Promise<{ bytes: number; inodes: number }> {
    return this.image.commit(this.root, { buildTime: this.now });
  }

  async abort(): Promise<void> {
    await this.image.abort();
  }

  // ---- TarHandler --------------------------------------------------------------------

  entry(h: TarHeader): void {
    const label = this.label;
    if (++this.entries > this.limits.maxEntries) throw new UnsafeArchiveError(`layer ${label}: more than ${this.limits.maxEntries} entries`);
    const size = h.size;
    if (!Number.isSafeInteger(size) || size < 0 || size > this.limits.maxEntryBytes)
      throw new UnsafeArchiveError(`layer ${label}: entry ${show(h.name)} has an absurd size ${size}`);
    if ((this.totalBytes += size) > this.limits.maxTotalBytes) throw new UnsafeArchiveError(`layer ${label}: more than ${this.limits.maxTotalBytes} bytes of files`);
    if (h.uid > 0xffffffff || h.gid > 0xffffffff) throw new UnsafeArchiveError(`layer ${label}: ${show(h.name)}: uid/gid out of range`);
    this.sink = null;

    const rel = cleanEntryPath(h.name);
    this.account(rel.length + h.linkname.length);
    const slash = rel.lastIndexOf('/');
    const base = slash < 0 ? rel : rel.slice(slash + 1);
    const parentParts = slash < 0 ? [] : rel.slice(0, slash).split('/');

    // Whiteouts: remove from lower layers, never materialize.
    if (base === OPAQUE) {
      this.makeOpaque(this.walk(parentParts, 'create-or-skip'));
      return this.discard(h);
    }
    if (base.startsWith(WHITEOUT)) {
      const victim = base.slice(WHITEOUT.length);
      if (!victim.startsWith('.wh.') && victim && victim !== '.' && victim !== '..') {
        // AUFS metadata (.wh..wh.plnk …) is ignored
        const dir = this.walk(parentParts, 'lookup');
        dir?.children.delete(victim);
      }
      return this.discard(h);
    }

    if (rel === '') {
      // The root itself ('./'): only its metadata.
      if (h.type === 'dir') this.setMeta(this.root, h);
      return this.discard(h);
    }
    if (base.length > EROFS_NAME_MAX) throw new UnsafeArchiveError(`layer ${label}: name longer than ${EROFS_NAME_MAX} bytes: ${show(h.name)}`);

    if (h.type === 'other') {
      this.logger.debug({ layer: label, entry: show(h.name), typeflag: h.typeflag }, 'skipping unsupported tar entry type');
      return this.discard(h);
    }

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
    if (h.type === 'dir') {
      if (existing?.kind === 'dir') {
        this.setMeta(existing, h);
      } else {
        const d = new DirNode(0o755, 0, 0, this.now, 0, null);
        this.setMeta(d, h);
        parent.children.set(base, d);
      }
      return;
    }

    switch (h.type) {
      case 'file': {
        const f = new FileNode(h.mode, h.uid, h.gid, h.mtime, h.mtimeNsec, this.xattrsFor(h, 'file'));
        f.size = size;
        const tail = size % BLOCK_SIZE;
        const full = size - tail;
        const inline = tail > 0 && 64 + xattrBodySize(f.xattrs) + tail <= BLOCK_SIZE && this.inlineBytes + tail <= INLINE_BUDGET;
        if (inline) {
          f.tail = Buffer.allocUnsafe(tail);
          this.inlineBytes += tail;
        }
        const data = this.image.data;
        f.blkaddr = full > 0 || !inline ? data.block : 0;
        parent.children.set(base, f);
        this.sink = { node: f, toData: inline ? full : size, tailFill: 0 };
        return;
      }
      case 'symlink': {
        if (!h.linkname || h.linkname.includes('\0')) throw new UnsafeArchiveError(`layer ${label}: bad symlink ${show(h.name)}`);
        if (h.linkname.length >= PATH_MAX) throw new UnsafeArchiveError(`layer ${label}: symlink ${show(h.name)} target longer than ${PATH_MAX - 1} bytes`);
        // The link text is data, interpreted later inside the container's root: it is only
        // ever followed by walk(), which keeps it inside.
        parent.children.set(base, new SymlinkNode(h.linkname, h.uid, h.gid, h.mtime, h.mtimeNsec, this.xattrsFor(h, 'symlink')));
        return;
      }
      case 'link':
        parent.children.set(base, linked!);
        return;
      case 'char':
      case 'block':
      case 'fifo': {
        const isDev = h.type !== 'fifo';
        if (isDev && (!Number.isSafeInteger(h.devmajor) || !Number.isSafeInteger(h.devminor) || h.devmajor < 0 || h.devminor < 0 || h.devmajor > 0xfff || h.devminor > 0xfffff))
          throw new UnsafeArchiveError(`layer ${label}: device ${show(h.name)} has an invalid number ${h.devmajor}:${h.devminor}`);
        const kind = h.type === 'char' ? 'chr' : h.type === 'block' ? 'blk' : 'fifo';
        parent.children.set(base, new DeviceNode(kind, isDev ? h.devmajor : 0, isDev ? h.devminor : 0, h.mode, h.uid, h.gid, h.mtime, h.mtimeNsec, this.xattrsFor(h, 'node')));
        return;
      }
    }
  }

  data(chunk: Buffer): void {
    const s = this.sink;
    if (!s?.node) return;
    let off = 0;
    if (s.toData > 0) {
      const n = Math.min(s.toData, chunk.length);
      this.image.data.write(n === chunk.length ? chunk : chunk.subarray(0, n));
      s.toData -= n;
      off = n;
    }
    if (off < chunk.length) {
      const tail = s.node.tail!;
      chunk.copy(tail, s.tailFill, off);
      s.tailFill += chunk.length - off;
    }
  }

  end(): void {
    if (this.sink?.node) this.image.data.pad();
    this.sink = null;
  }

  // ---- helpers -----------------------------------------------------------------------

  private discard(h: TarHeader): void {
    if (h.type === 'file') this.sink = { node: null, toData: 0, tailFill: 0 };
  }

  private account(bytes: number): void {
    if ((this.metaBytes += bytes) > this.limits.maxMetadataBytes)
      throw new UnsafeArchiveError(`layer ${this.label}: more than ${this.limits.maxMetadataBytes} bytes of names, link targets and xattrs`);
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
        this.account(c.length);
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

  private setMeta(n: DirNode, h: TarHeader): void {
    n.mode = h.mode & 0o7777;
    n.uid = h.uid;
    n.gid = h.gid;
    n.mtime = h.mtime;
    n.mtimeNsec = h.mtimeNsec;
    // Like containerd, a directory entry over an existing directory adds its xattrs to the
    // ones lower layers set (image differs often write only some, e.g. security.capability).
    const x = this.xattrsFor(h, 'dir');
    if (x && n.xattrs) {
      for (const [k, v] of x) n.xattrs.set(k, v);
      if (n.xattrs.size > MAX_XATTRS_PER_ENTRY || xattrBodySize(n.xattrs) > MAX_XATTR_BYTES_PER_ENTRY)
        throw new UnsafeArchiveError(`layer ${this.label}: ${show(h.name)}: more than ${MAX_XATTRS_PER_ENTRY} xattrs or ${MAX_XATTR_BYTES_PER_ENTRY} bytes of them`);
    } else {
      n.xattrs ??= x;
    }
    if (n === this.root && xattrBodySize(n.xattrs) > BLOCK_SIZE - 1152 - 64)
      throw new UnsafeArchiveError(`layer ${this.label}: xattrs of the root directory are too large`);
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
        this.droppedXattrs.add(name);
        continue;
      }
      out.set(name, value);
      bytes += (4 + name.length - prefix[0].length + value.length + 3) & ~3;
      if (out.size > MAX_XATTRS_PER_ENTRY || bytes > MAX_XATTR_BYTES_PER_ENTRY)
        throw new UnsafeArchiveError(`layer ${this.label}: ${show(h.name)}: more than ${MAX_XATTRS_PER_ENTRY} xattrs or ${MAX_XATTR_BYTES_PER_ENTRY} bytes of them`);
    }
    if (out.size === 0) return null;
    this.account(bytes);
    return out;
  }
}
