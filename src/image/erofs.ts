// Writes the read-only erofs image that is hot-plugged into pod VMs, straight from an
// in-memory tree whose file contents were streamed into the image file as layers were read
// (unpack.ts). No directory tree is materialized on the host and nothing re-reads the data.
//
// Written here because Debian 12's erofs-utils 1.5 can only build from a directory (`--tar`
// came with 1.7), and creating, re-reading and deleting every file of an image costs more than
// the whole download (bench/pull.ts). The format subset is small and stable since Linux 5.4:
//   - 4 KiB blocks, uncompressed; meta_blkaddr = 0, so an inode's nid is its byte offset / 32;
//   - block 0: the superblock at 1024 and the root directory's inode at 1152 (root_nid is 16
//     bits, so the root has to live near the start); then file data blocks, as they were
//     streamed; then directory and long-symlink blocks; then every other inode;
//   - 64-byte extended inodes (32-bit uid/gid, 64-bit size and mtime with nanoseconds);
//   - FLAT_PLAIN (contiguous blocks) or FLAT_INLINE (full blocks + the tail right after the
//     inode, inside the same block) data; devices keep their number in i_u;
//   - inline xattrs (user., trusted., security.), no shared xattrs;
//   - directories: blocks of sorted dirents ('.' and '..' included), names after the dirents.
// The result is checked by the tests with the kernel (loop mount) and fsck.erofs.
import { randomBytes } from 'node:crypto';
import { promises as fsp, constants as C, writev as fsWritev } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { fsyncDir } from '../util/dirs';
import { startWriteback } from './writeback';

export const BLOCK_SIZE = 4096;
const BLOCK_BITS = 12;
const SUPER_OFFSET = 1024;
const ROOT_OFFSET = 1152; // first 32-byte slot after the 128-byte superblock
const INODE_SIZE = 64;
const DIRENT_SIZE = 12;
const MAGIC = 0xe0f5e1e2;
const NAME_MAX = 255;

const FLAT_PLAIN = 0;
const FLAT_INLINE = 2;

const S_IFMT = { file: 0o100000, dir: 0o040000, symlink: 0o120000, chr: 0o020000, blk: 0o060000, fifo: 0o010000 } as const;
const FILE_TYPE = { file: 1, dir: 2, chr: 3, blk: 4, fifo: 5, symlink: 7 } as const;

/** xattr name prefixes erofs can index (and that images may carry). */
export const XATTR_PREFIXES: readonly [string, number][] = [
  ['user.', 1],
  ['trusted.', 4],
  ['security.', 6],
];
export const XATTR_NAME_MAX = 255;
export const XATTR_VALUE_MAX = 65535;

/** Bytes the inline xattr area of an inode takes (0 without xattrs). */
export function xattrBodySize(xattrs: Map<string, Buffer> | null): number {
  if (!xattrs || xattrs.size === 0) return 0;
  let n = 12;
  for (const [name, value] of xattrs) {
    const prefix = XATTR_PREFIXES.find(([p]) => name.startsWith(p));
    if (!prefix) throw new Error(`xattr ${name}: unsupported namespace`);
    n += (4 + name.length - prefix[0].length + value.length + 3) & ~3;
  }
  return n;
}

function encodeXattrs(xattrs: Map<string, Buffer>, out: Buffer, at: number): number {
  // ibody header: h_reserved, h_shared_count = 0, reserved: all zero.
  out.fill(0, at, at + 12);
  let off = at + 12;
  for (const name of [...xattrs.keys()].sort()) {
    const value = xattrs.get(name)!;
    const [prefix, index] = XATTR_PREFIXES.find(([p]) => name.startsWith(p))!;
    const suffixLen = name.length - prefix.length;
    out[off] = suffixLen;
    out[off + 1] = index;
    out.writeUInt16LE(value.length, off + 2);
    out.write(name.slice(prefix.length), off + 4, 'latin1');
    value.copy(out, off + 4 + suffixLen);
    const end = off + 4 + suffixLen + value.length;
    const padded = (end - at + 3) & ~3;
    out.fill(0, end, at + padded);
    off = at + padded;
  }
  return off - at;
}

// ---- the tree ------------------------------------------------------------------------------

interface Layout {
  /** nid (byte offset / 32); assigned by writeImage. */
  nid: number;
  nlink: number;
}

abstract class NodeBase implements Layout {
  nid = -1;
  nlink = 0;
  constructor(
    public mode: number,
    public uid: number,
    public gid: number,
    public mtime: number,
    public mtimeNsec: number,
    public xattrs: Map<string, Buffer> | null,
  ) {}
}

export class DirNode extends NodeBase {
  readonly kind = 'dir';
  readonly children = new Map<string, Node>();
}

export class FileNode extends NodeBase {
  readonly kind = 'file';
  size = 0;
  /** First data block (full blocks, and the tail too unless it is inline). */
  blkaddr = 0;
  /** The last partial block, stored inline after the inode (FLAT_INLINE); null: FLAT_PLAIN. */
  tail: Buffer | null = null;
}

export class SymlinkNode extends NodeBase {
  readonly kind = 'symlink';
  constructor(public target: string, uid: number, gid: number, mtime: number, mtimeNsec: number, xattrs: Map<string, Buffer> | null) {
    super(0o777, uid, gid, mtime, mtimeNsec, xattrs);
  }
}

export class DeviceNode extends NodeBase {
  constructor(
    readonly kind: 'chr' | 'blk' | 'fifo',
    public major: number,
    public minor: number,
    mode: number,
    uid: number,
    gid: number,
    mtime: number,
    mtimeNsec: number,
    xattrs: Map<string, Buffer> | null,
  ) {
    super(mode, uid, gid, mtime, mtimeNsec, xattrs);
  }
}

export type Node = DirNode | FileNode | SymlinkNode | DeviceNode;

// ---- the image file ------------------------------------------------------------------------

const STAGE = 1 << 20;
const MAX_INFLIGHT = 8;

/**
 * The image's block allocator: a bump counter in shared memory, so that layer readers on
 * worker threads (layer-pool.ts) allocate extents of the same image. Cell `slot` of `cells`
 * holds the next free block; block 0 (superblock, root inode) is written last, data starts
 * at block 1. Other cells of the array are free for the caller's own counters.
 */
export class BlockCounter {
  constructor(
    readonly cells: BigInt64Array,
    readonly slot = 0,
  ) {}

  /** A counter in a fresh shared array of `cells` cells (slot 0 starts at block 1). */
  static create(cells = 8): BlockCounter {
    const c = new BlockCounter(new BigInt64Array(new SharedArrayBuffer(cells * 8)));
    Atomics.store(c.cells, 0, 1n);
    return c;
  }

  /** Reserves `n` contiguous blocks; returns the first. */
  alloc(n: number): number {
    return Number(Atomics.add(this.cells, this.slot, BigInt(n)));
  }

  /** Blocks allocated so far (the end of the data area). */
  get end(): number {
    return Number(Atomics.load(this.cells, this.slot));
  }
}

/** Dirty bytes of the image after which its writeback is started (see writeback.ts). */
const WRITEBACK_EVERY = 8 << 20;

/**
 * The image file: block allocation (shared, see BlockCounter) and positioned async writes
 * (a few in flight, failures reported at the next drain) through a FileHandle or, on a
 * worker thread, the same file's descriptor number.
 */
export class ImageFile {
  private inflight = new Set<Promise<void>>();
  private failed: Error | null = null;
  private readonly write: (parts: Buffer[], at: number) => Promise<number>;
  private readonly fd: number;
  /** Bytes written since writeback was last started. */
  private dirty = 0;

  constructor(
    target: FileHandle | number,
    readonly blocks: BlockCounter = BlockCounter.create(),
  ) {
    this.fd = typeof target === 'number' ? target : target.fd;
    if (typeof target === 'number') {
      this.write = (parts, at) =>
        new Promise((resolve, reject) => fsWritev(target, parts, at, (e, n) => (e ? reject(e) : resolve(n))));
    } else {
      this.write = async (parts, at) => (await target.writev(parts, at)).bytesWritten;
    }
  }

  /** Reserves `n` contiguous blocks; returns the first. */
  alloc(n: number): number {
    return this.blocks.alloc(n);
  }

  /** Blocks allocated so far (the end of the data area). */
  get end(): number {
    return this.blocks.end;
  }

  /** Writes `parts` (`len` bytes in all) at byte `at`, in the background; the promise never rejects (see drain). */
  writev(parts: Buffer[], len: number, at: number): Promise<void> {
    const p: Promise<void> = (async () => {
      const bytesWritten = await this.write(parts, at);
      if (bytesWritten !== len) throw new Error(`short write to the image (${bytesWritten} of ${len} bytes)`);
      if ((this.dirty += len) >= WRITEBACK_EVERY) {
        this.dirty = 0;
        // Not waited for by the writer; drain(0) waits for it (the descriptor stays open).
        const wb: Promise<void> = startWriteback(this.fd).finally(() => this.inflight.delete(wb));
        this.inflight.add(wb);
      }
    })().then(
      () => {
        this.inflight.delete(p);
      },
      (e) => {
        this.inflight.delete(p);
        this.failed ??= e;
      },
    );
    this.inflight.add(p);
    return p;
  }

  get busy(): boolean {
    return this.inflight.size >= MAX_INFLIGHT;
  }

  /** Waits until at most `max` writes are in flight; throws the first write error. */
  async drain(max = MAX_INFLIGHT - 1): Promise<void> {
    while (this.inflight.size > max) await Promise.race(this.inflight);
    this.check();
  }

  check(): void {
    if (this.failed) throw this.failed;
  }
}

const ZEROS = Buffer.alloc(BLOCK_SIZE);

/**
 * Writes extents of the image: begin() allocates an extent, write() appends to it. Chunks are
 * not copied: up to ~1 MiB of them (and zero padding to whole blocks) is gathered and written
 * with one positioned writev, so callers must not modify a chunk after passing it (zlib and
 * the tar reader hand out fresh buffers). Consecutive extents of one Stager are usually
 * contiguous and share a write. Padding matters: stale bytes past EOF would show in mmap.
 * One Stager per concurrent producer (layer).
 */
export class Stager {
  private parts: Buffer[] = [];
  private bytes = 0;
  /** Byte position of the first gathered part in the image. */
  private pos = -1;
  /** This Stager's own writes in flight (other producers' writes never hold it up). */
  private inflight = new Set<Promise<void>>();

  constructor(readonly file: ImageFile) {}

  /** Allocates `blocks` blocks and positions the writer at the first; returns its number. */
  begin(blocks: number): number {
    this.pad();
    const b = this.file.alloc(blocks);
    if (this.pos + this.bytes !== b * BLOCK_SIZE) {
      this.flush();
      this.pos = b * BLOCK_SIZE;
    }
    return b;
  }

  write(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.parts.push(chunk);
    this.bytes += chunk.length;
    if (this.bytes >= STAGE || this.parts.length >= 1000) this.flush();
  }

  zeros(n: number): void {
    while (n > 0) {
      const k = Math.min(n, BLOCK_SIZE);
      this.write(ZEROS.subarray(0, k));
      n -= k;
    }
  }

  /** Zero-fills up to the next block boundary. */
  pad(): void {
    const r = (this.pos + this.bytes) % BLOCK_SIZE;
    if (this.pos >= 0 && r) this.zeros(BLOCK_SIZE - r);
  }

  private flush(): void {
    if (this.bytes === 0) return;
    const p = this.file.writev(this.parts, this.bytes, this.pos).finally(() => this.inflight.delete(p));
    this.inflight.add(p);
    this.pos += this.bytes;
    this.parts = [];
    this.bytes = 0;
  }

  /** True when the caller should await drain() before handing over more data. */
  get busy(): boolean {
    return this.inflight.size >= 4;
  }

  async drain(max = 3): Promise<void> {
    while (this.inflight.size > max) await Promise.race(this.inflight);
    this.file.check();
  }

  /** Pads, flushes what is gathered and waits for this Stager's writes. */
  async close(): Promise<void> {
    this.pad();
    this.flush();
    await this.drain(0);
  }
}

/** An image being built: a temp file next to `out`, renamed into place by commit(). */
export class ErofsImage {
  readonly file: ImageFile;

  private constructor(
    readonly out: string,
    readonly tmp: string,
    readonly fh: FileHandle,
    blocks: BlockCounter,
  ) {
    this.file = new ImageFile(fh, blocks);
  }

  static async create(out: string, blocks = BlockCounter.create()): Promise<ErofsImage> {
    const tmp = path.join(path.dirname(out), `.tmp-${path.basename(out)}-${randomBytes(4).toString('hex')}`);
    const fh = await fsp.open(tmp, C.O_RDWR | C.O_CREAT | C.O_EXCL, 0o600);
    return new ErofsImage(out, tmp, fh, blocks);
  }

  async abort(): Promise<void> {
    await this.file.drain(0).catch(() => undefined);
    await this.fh.close().catch(() => undefined);
    await fsp.rm(this.tmp, { force: true });
  }

  /**
   * Lays out the metadata of `root` after the data, writes it, syncs and renames the image to
   * its final name. Every Stager used for data must be closed. Returns size and inode count.
   */
  async commit(root: DirNode, opts: { buildTime?: number } = {}): Promise<{ bytes: number; inodes: number; metadataMs: number; syncMs: number }> {
    try {
      const t0 = Date.now();
      await this.file.drain(0);
      // The data is all written: its writeback runs while the metadata is laid out.
      const wb = startWriteback(this.fh.fd);
      const r = await writeMetadata(this.file, this.fh, root, opts.buildTime ?? Math.floor(Date.now() / 1000));
      const t1 = Date.now();
      await wb;
      await this.fh.chmod(0o444);
      await this.fh.sync();
      await this.fh.close();
      await fsp.rename(this.tmp, this.out);
      await fsyncDir(path.dirname(this.out));
      return { ...r, metadataMs: t1 - t0, syncMs: Date.now() - t1 };
    } catch (e) {
      await this.abort();
      throw e;
    }
  }
}

interface Planned {
  node: Node;
  layout: number;
  /** i_size */
  size: number;
  /** i_u: raw_blkaddr or rdev */
  iu: number;
  xattrSize: number;
  inline: Buffer | null;
  /** Directory: names (sorted) and where each block starts in that list. */
  names?: string[];
  blockStarts?: number[];
  /** Data blocks this inode needs written after the file data (directories, long symlinks). */
  extraBlocks: number;
  ino: number;
}

function dirBlocks(names: string[]): { size: number; starts: number[] } {
  const starts: number[] = [];
  let used = BLOCK_SIZE; // force a new block for the first name
  let size = 0;
  for (let i = 0; i < names.length; i++) {
    const need = DIRENT_SIZE + names[i].length;
    if (used + need > BLOCK_SIZE) {
      if (starts.length) size += BLOCK_SIZE;
      starts.push(i);
      used = 0;
    }
    used += need;
  }
  return { size: size + used, starts };
}

function encodeDirBlock(p: Planned, block: number, children: Map<string, Node>, self: Node, parent: Node, out: Buffer, at: number): number {
  const names = p.names!;
  const from = p.blockStarts![block];
  const to = block + 1 < p.blockStarts!.length ? p.blockStarts![block + 1] : names.length;
  let nameoff = (to - from) * DIRENT_SIZE;
  for (let i = from; i < to; i++) {
    const name = names[i];
    const child = name === '.' ? self : name === '..' ? parent : children.get(name)!;
    const d = at + (i - from) * DIRENT_SIZE;
    out.writeUInt32LE(child.nid % 2 ** 32, d);
    out.writeUInt32LE(Math.floor(child.nid / 2 ** 32), d + 4);
    out.writeUInt16LE(nameoff, d + 8);
    out[d + 10] = FILE_TYPE[child.kind];
    out[d + 11] = 0;
    out.write(name, at + nameoff, 'latin1');
    nameoff += name.length;
  }
  return nameoff;
}

function encodeInode(p: Planned, buildTime: number, out: Buffer, at: number): void {
  const n = p.node;
  out.writeUInt16LE(1 | (p.layout << 1), at); // extended inode
  out.writeUInt16LE(p.xattrSize ? (p.xattrSize - 12) / 4 + 1 : 0, at + 2);
  out.writeUInt16LE(S_IFMT[n.kind] | (n.mode & 0o7777), at + 4);
  out.writeUInt16LE(0, at + 6);
  out.writeBigUInt64LE(BigInt(p.size), at + 8);
  out.writeUInt32LE(p.iu >>> 0, at + 16);
  out.writeUInt32LE(p.ino >>> 0, at + 20);
  out.writeUInt32LE(n.uid >>> 0, at + 24);
  out.writeUInt32LE(n.gid >>> 0, at + 28);
  out.writeBigInt64LE(BigInt(Number.isSafeInteger(n.mtime) ? n.mtime : buildTime), at + 32);
  out.writeUInt32LE(n.mtimeNsec >>> 0, at + 40);
  out.writeUInt32LE(n.nlink >>> 0, at + 44);
  out.fill(0, at + 48, at + 64);
  let off = at + INODE_SIZE;
  if (p.xattrSize) off += encodeXattrs(n.xattrs!, out, off);
  if (p.inline) p.inline.copy(out, off);
}

/** Linux new_encode_dev: 12-bit major, 20-bit minor. */
function encodeDev(major: number, minor: number): number {
  return ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12)) >>> 0;
}

async function writeMetadata(file: ImageFile, fh: FileHandle, root: DirNode, buildTime: number): Promise<{ bytes: number; inodes: number }> {

  // 1. Every inode once (hard links share a node), with link counts and parents.
  const plans: Planned[] = [];
  const parentOf = new Map<DirNode, DirNode>([[root, root]]);
  const seen = new Set<Node>();
  const plan = (node: Node): Planned => {
    const p: Planned = { node, layout: FLAT_PLAIN, size: 0, iu: 0, xattrSize: xattrBodySize(node.xattrs), inline: null, extraBlocks: 0, ino: plans.length + 1 };
    plans.push(p);
    return p;
  };
  const dirs: DirNode[] = [root];
  root.nlink = 2;
  plan(root);
  for (let i = 0; i < dirs.length; i++) {
    const d = dirs[i];
    for (const child of d.children.values()) {
      if (child.kind === 'dir') {
        d.nlink++;
        child.nlink = 2;
        parentOf.set(child, d);
        dirs.push(child);
        plan(child);
      } else if (!seen.has(child)) {
        seen.add(child);
        child.nlink = 1;
        plan(child);
      } else {
        child.nlink++;
      }
    }
  }

  // 2. Sizes and data layouts; blocks for directories and long symlinks go after the data.
  let extraBlock = file.end;
  const extra: Planned[] = [];
  for (const p of plans) {
    const n = p.node;
    const room = (n === root ? BLOCK_SIZE - ROOT_OFFSET : BLOCK_SIZE) - INODE_SIZE - p.xattrSize;
    if (room < 0) throw new Error(`xattrs of ${n === root ? 'the root directory' : 'an inode'} do not fit in a block`);
    switch (n.kind) {
      case 'file':
        p.size = n.size;
        p.iu = n.blkaddr;
        if (n.tail) {
          p.layout = FLAT_INLINE;
          p.inline = n.tail;
        }
        break;
      case 'symlink': {
        const t = Buffer.from(n.target, 'latin1');
        p.size = t.length;
        if (t.length <= room) {
          p.layout = FLAT_INLINE;
          p.inline = t;
        } else {
          p.iu = extraBlock++;
          p.extraBlocks = 1;
          extra.push(p);
        }
        break;
      }
      case 'dir': {
        const names = ['.', '..', ...n.children.keys()].sort();
        const { size, starts } = dirBlocks(names);
        p.names = names;
        p.blockStarts = starts;
        p.size = size;
        const tail = size % BLOCK_SIZE;
        const full = Math.floor(size / BLOCK_SIZE);
        if (tail && tail <= room) {
          p.layout = FLAT_INLINE;
          p.inline = Buffer.alloc(tail); // filled once nids are known
          p.extraBlocks = full;
        } else {
          p.extraBlocks = Math.ceil(size / BLOCK_SIZE);
        }
        p.iu = p.extraBlocks ? extraBlock : 0;
        extraBlock += p.extraBlocks;
        if (p.extraBlocks) extra.push(p);
        break;
      }
      default:
        p.iu = n.kind === 'fifo' ? 0 : encodeDev(n.major, n.minor);
    }
  }

  // 3. nids: the root in block 0, the others packed after the extra blocks. An inode, its
  // xattrs and its inline tail stay within one block when they fit in one.
  root.nid = ROOT_OFFSET / 32;
  let pos = extraBlock * BLOCK_SIZE;
  const metaStart = pos;
  for (const p of plans) {
    if (p.node === root) continue;
    const len = INODE_SIZE + p.xattrSize + (p.inline?.length ?? 0);
    const inBlock = pos % BLOCK_SIZE;
    if (inBlock + Math.min(len, BLOCK_SIZE) > BLOCK_SIZE) pos += BLOCK_SIZE - inBlock;
    p.node.nid = pos / 32;
    pos = (pos + len + 31) & ~31;
  }
  const totalBlocks = Math.ceil(pos / BLOCK_SIZE);

  // 4. Directory and symlink blocks, in the order they were allocated, then the inodes. They
  // are encoded into fresh 1 MiB buffers (the Stager keeps references, it does not copy).
  const data = new Stager(file);
  data.begin(totalBlocks - file.end);
  let cur = Buffer.alloc(STAGE);
  let fill = 0;
  /** `n` zeroed bytes at cur[fill…]; returns their offset. */
  const reserve = (n: number): number => {
    if (fill + n > cur.length) {
      data.write(cur.subarray(0, fill));
      cur = Buffer.alloc(Math.max(STAGE, n));
      fill = 0;
    }
    const at = fill;
    fill += n;
    return at;
  };
  for (const p of extra) {
    const n = p.node;
    // (reserve() may switch `cur`: call it before reading `cur`.)
    if (n.kind === 'symlink') {
      const at = reserve(BLOCK_SIZE);
      cur.write(n.target, at, 'latin1');
    } else if (n.kind === 'dir') {
      for (let b = 0; b < p.extraBlocks; b++) {
        const at = reserve(BLOCK_SIZE);
        encodeDirBlock(p, b, n.children, n, parentOf.get(n)!, cur, at);
      }
    }
    if (file.busy) await file.drain();
  }
  // Inline directory tails.
  for (const p of plans) {
    const n = p.node;
    if (n.kind === 'dir' && p.inline) {
      const b = p.blockStarts!.length - 1;
      encodeDirBlock(p, b, n.children, n, parentOf.get(n)!, p.inline, 0);
    }
  }

  // 5. Inodes.
  let metaPos = metaStart;
  for (const p of plans) {
    if (p.node === root) continue;
    const at = p.node.nid * 32;
    if (at > metaPos) reserve(at - metaPos);
    const len = INODE_SIZE + p.xattrSize + (p.inline?.length ?? 0);
    const padded = (len + 31) & ~31;
    const off = reserve(padded);
    encodeInode(p, buildTime, cur, off);
    metaPos = at + padded;
    if (file.busy) await file.drain();
  }
  reserve(totalBlocks * BLOCK_SIZE - metaPos);
  data.write(cur.subarray(0, fill));
  await data.close();

  // 6. Block 0: superblock and root inode.
  const b0 = Buffer.alloc(BLOCK_SIZE);
  const sb = SUPER_OFFSET;
  b0.writeUInt32LE(MAGIC, sb);
  b0.writeUInt32LE(0, sb + 4); // checksum (feature SB_CHKSUM not set)
  b0.writeUInt32LE(0, sb + 8); // feature_compat
  b0[sb + 12] = BLOCK_BITS;
  b0[sb + 13] = 0; // sb_extslots
  b0.writeUInt16LE(root.nid, sb + 14);
  b0.writeBigUInt64LE(BigInt(plans.length), sb + 16); // inos
  b0.writeBigUInt64LE(BigInt(buildTime), sb + 24);
  b0.writeUInt32LE(0, sb + 32);
  b0.writeUInt32LE(totalBlocks, sb + 36);
  b0.writeUInt32LE(0, sb + 40); // meta_blkaddr
  b0.writeUInt32LE(0, sb + 44); // xattr_blkaddr
  randomBytes(16).copy(b0, sb + 48); // uuid
  encodeInode(plans[0], buildTime, b0, ROOT_OFFSET);
  let off = 0;
  while (off < BLOCK_SIZE) off += (await fh.write(b0, off, BLOCK_SIZE - off, off)).bytesWritten;
  await fh.truncate(totalBlocks * BLOCK_SIZE);
  return { bytes: totalBlocks * BLOCK_SIZE, inodes: plans.length };
}

export { NAME_MAX as EROFS_NAME_MAX };
