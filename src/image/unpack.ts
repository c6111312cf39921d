// Applies image layers (tar, gzip or zstd) in order onto one directory tree, with OCI
// whiteouts, keeping ownership, modes, times, symlinks, hard links and device nodes.
//
// Path safety is written here by hand (no library does it the way we need). Layers are
// hostile input; the invariant is that nothing is created, changed or removed outside `root`:
//  - entry names are cleaned lexically: a leading '/' is dropped (neutralized), a '..' that
//    would climb above the root refuses the layer;
//  - every parent directory is resolved inside the root, component by component with lstat,
//    following symlinks the way a chroot would (an absolute target restarts at the root, '..'
//    stops at the root) — so `evil -> /etc` then `evil/passwd` lands in <root>/etc/passwd;
//  - the final component is never followed: an existing entry is removed first and new files
//    are opened O_CREAT|O_EXCL|O_NOFOLLOW;
//  - hard-link targets get the same treatment and must already exist in the tree;
//  - entry counts, single entry sizes and total bytes are capped (tar bombs, absurd headers).
// Only this process writes under `root` (a private 0700 temp dir) while a layer is applied, so
// checking then acting is not racy.
// Per-entry metadata calls are synchronous on purpose: each takes microseconds on the page
// cache, while a threadpool round trip per call made unpacking 3x slower for small files; the
// loop still yields between tar entries.
import { createHash } from 'node:crypto';
import fs, { promises as fsp, constants as C, createReadStream } from 'node:fs';
import { execFile, spawn } from 'node:child_process';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { promisify } from 'node:util';
import * as tar from 'tar-stream';
import type { Logger } from '../log';

const execFileP = promisify(execFile);

export class UnsafeArchiveError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UnsafeArchiveError';
  }
}

export interface UnpackLimits {
  maxEntries: number;      // per image
  maxEntryBytes: number;   // one file
  maxTotalBytes: number;   // all layers, uncompressed file data
}

export const DEFAULT_LIMITS: UnpackLimits = {
  maxEntries: 2_000_000,
  maxEntryBytes: 64 * 2 ** 30,
  maxTotalBytes: 256 * 2 ** 30,
};

const WHITEOUT = '.wh.';
const OPAQUE = '.wh..wh..opq';
const MAX_SYMLINK_HOPS = 40;

/**
 * Cleans a tar entry name to a root-relative path ('' is the root itself). Leading '/' and
 * '.' components are dropped; '..' is resolved lexically and refused if it leaves the root.
 */
export function cleanEntryPath(name: string): string {
  if (name.includes('\0')) throw new UnsafeArchiveError(`entry name contains NUL: ${JSON.stringify(name)}`);
  const out: string[] = [];
  for (const c of name.split('/')) {
    if (c === '' || c === '.') continue;
    if (c === '..') {
      if (out.length === 0) throw new UnsafeArchiveError(`entry escapes the root: ${JSON.stringify(name)}`);
      out.pop();
      continue;
    }
    out.push(c);
  }
  return out.join('/');
}

function isENOENT(e: any): boolean {
  return e?.code === 'ENOENT';
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

let setfattrAvailable: Promise<boolean> | undefined;
function haveSetfattr(): Promise<boolean> {
  setfattrAvailable ??= execFileP('setfattr', ['--version']).then(() => true, () => false);
  return setfattrAvailable;
}

/**
 * Builds one image's root filesystem. Create it on an empty directory, call applyLayer for
 * each layer in order, then finish().
 */
export class RootfsBuilder {
  private entries = 0;
  private totalBytes = 0;
  /** Root-relative paths known to be real directories (not symlinks): saves lstat calls. */
  private knownDirs = new Set<string>(['']);
  /** Paths created by the layer being applied (an opaque dir keeps those). */
  private createdThisLayer = new Set<string>();
  private dirTimes = new Map<string, Date>();
  private warnedXattr = false;

  constructor(
    readonly root: string,
    private readonly logger: Logger,
    private readonly limits: UnpackLimits = DEFAULT_LIMITS,
  ) {}

  /**
   * Applies a layer file (compression sniffed). When `diffId` is given, the uncompressed
   * stream must hash to it (the image config's rootfs.diff_ids).
   */
  async applyLayerFile(file: string, diffId?: string, label = path.basename(file)): Promise<void> {
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
        child!.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`zstd -d failed (${code}): ${err.trim()}`))));
      });
      childDone.catch(() => undefined);
      source = child.stdout!;
    } else {
      const raw = createReadStream(file, { highWaterMark: 1 << 20 });
      source = kind === 'gzip' ? raw.pipe(createGunzip()) : raw;
      if (kind === 'gzip') raw.on('error', (e) => source.destroy(e));
    }
    const hash = createHash('sha256');
    const tap = new Transform({
      transform(chunk, _enc, cb) {
        hash.update(chunk);
        cb(null, chunk);
      },
    });
    source.on('error', (e) => tap.destroy(e)); // pipe() does not forward errors
    try {
      // pipeline() inside consumes the stream to its end (padding after the tar end marker
      // included), so the hash covers the whole uncompressed layer.
      await this.applyTarStream(source.pipe(tap), label);
      await childDone;
    } catch (e) {
      source.destroy();
      child?.kill();
      throw e;
    }
    if (diffId) {
      const got = `sha256:${hash.digest('hex')}`;
      if (got !== diffId) throw new UnsafeArchiveError(`layer ${label}: uncompressed content ${got} does not match diff_id ${diffId}`);
    }
  }

  /** Applies one uncompressed tar stream. */
  async applyTarStream(stream: Readable, label = 'layer'): Promise<void> {
    this.createdThisLayer = new Set();
    const extract = tar.extract();
    const feeding = pipeline(stream, extract).catch((e) => {
      extract.destroy(e);
      throw e;
    });
    try {
      for await (const entry of extract) {
        await this.applyEntry(entry.header, entry as unknown as AsyncIterable<Buffer>, label);
        entry.resume();
      }
    } catch (e: any) {
      stream.destroy();
      await feeding.catch(() => undefined);
      if (e instanceof UnsafeArchiveError) throw e;
      throw new UnsafeArchiveError(`layer ${label}: ${e?.message ?? e}`);
    }
    await feeding.catch((e) => {
      throw new UnsafeArchiveError(`layer ${label}: ${e?.message ?? e}`);
    });
  }

  /** Sets directory times last (adding children changes them), deepest first. */
  async finish(): Promise<void> {
    const dirs = [...this.dirTimes.entries()].sort((a, b) => b[0].split('/').length - a[0].split('/').length);
    for (const [rel, t] of dirs) {
      await fsp.lutimes(this.abs(rel), t, t).catch((e) => {
        if (!isENOENT(e)) throw e;
      });
    }
  }

  private abs(rel: string): string {
    return rel === '' ? this.root : path.join(this.root, rel);
  }

  /** Drops cached directory knowledge at and below `rel` after it was removed or replaced. */
  private forget(rel: string): void {
    if (rel === '') {
      this.knownDirs = new Set(['']);
      return;
    }
    for (const d of this.knownDirs) if (d === rel || d.startsWith(`${rel}/`)) this.knownDirs.delete(d);
    this.dirTimes.delete(rel);
  }

  /**
   * Resolves a root-relative path inside the root, following symlinks in every component
   * (and in the last one too when `followLast`) as if the root were '/'. Returns the
   * root-relative path of a location whose existing ancestors are all real directories.
   */
  async resolveInRoot(rel: string, followLast: boolean): Promise<string> {
    const todo = rel.split('/').filter((c) => c !== '' && c !== '.');
    const done: string[] = [];
    let hops = 0;
    let missing = false;
    while (todo.length) {
      const c = todo.shift()!;
      if (c === '' || c === '.') continue;
      if (c === '..') {
        done.pop(); // never above the root
        continue;
      }
      const candidate = done.length ? `${done.join('/')}/${c}` : c;
      if (missing || (todo.length === 0 && !followLast) || this.knownDirs.has(candidate)) {
        done.push(c);
        continue;
      }
      let st;
      try {
        st = fs.lstatSync(this.abs(candidate));
      } catch (e) {
        if (!isENOENT(e)) throw e;
        missing = true; // nothing below a missing entry can be a symlink
        done.push(c);
        continue;
      }
      if (st.isSymbolicLink()) {
        if (++hops > MAX_SYMLINK_HOPS) throw new UnsafeArchiveError(`too many symlinks resolving ${rel}`);
        const target = fs.readlinkSync(this.abs(candidate));
        if (target.startsWith('/')) done.length = 0;
        todo.unshift(...target.split('/'));
        continue;
      }
      if (st.isDirectory()) this.knownDirs.add(candidate);
      done.push(c);
    }
    return done.join('/');
  }

  /** Creates the missing directories of root-relative `rel` (already resolved, no symlinks). */
  private async mkdirs(rel: string): Promise<void> {
    if (rel === '' || this.knownDirs.has(rel)) return;
    const parts = rel.split('/');
    let cur = '';
    for (const p of parts) {
      cur = cur ? `${cur}/${p}` : p;
      if (this.knownDirs.has(cur)) continue;
      try {
        fs.mkdirSync(this.abs(cur), 0o755);
      } catch (e: any) {
        if (e.code !== 'EEXIST') throw e;
        const st = fs.lstatSync(this.abs(cur));
        // resolveInRoot already followed symlinks, so anything but a directory is a conflict.
        if (!st.isDirectory()) throw new UnsafeArchiveError(`parent ${cur} is not a directory`);
      }
      this.knownDirs.add(cur);
      this.createdThisLayer.add(cur);
    }
  }

  /** Removes whatever is at root-relative `rel` (never following it), recursively. */
  private async removeAt(rel: string): Promise<void> {
    if (rel === '') throw new UnsafeArchiveError('refusing to remove the root');
    // rm with force does not follow a symlink at `rel` itself; its parents are resolved.
    await fsp.rm(this.abs(rel), { recursive: true, force: true });
    this.forget(rel);
  }

  private async applyEntry(h: tar.Header, body: AsyncIterable<Buffer>, label: string): Promise<void> {
    if (++this.entries > this.limits.maxEntries) throw new UnsafeArchiveError(`layer ${label}: more than ${this.limits.maxEntries} entries`);
    const size = h.size ?? 0;
    if (!Number.isSafeInteger(size) || size < 0 || size > this.limits.maxEntryBytes)
      throw new UnsafeArchiveError(`layer ${label}: entry ${JSON.stringify(h.name)} has an absurd size ${size}`);
    if ((this.totalBytes += size) > this.limits.maxTotalBytes)
      throw new UnsafeArchiveError(`layer ${label}: more than ${this.limits.maxTotalBytes} bytes of files`);

    const rel = cleanEntryPath(h.name);
    const base = path.posix.basename(rel);
    const parentRel = await this.resolveInRoot(path.posix.dirname(rel) === '.' ? '' : path.posix.dirname(rel), true);

    // Whiteouts: remove from lower layers, never materialize.
    if (base === OPAQUE) {
      await this.makeOpaque(parentRel);
      return;
    }
    if (base.startsWith(WHITEOUT)) {
      const victim = base.slice(WHITEOUT.length);
      if (victim.startsWith('.wh.')) return; // other AUFS metadata (.wh..wh.plnk …)
      if (victim && victim !== '.' && victim !== '..') await this.removeAt(parentRel ? `${parentRel}/${victim}` : victim);
      return;
    }

    if (rel === '') {
      // The root itself ('./'): only its metadata.
      if (h.type === 'directory') await this.setMeta('', h, 'directory');
      return;
    }
    await this.mkdirs(parentRel);
    const target = parentRel ? `${parentRel}/${base}` : base;
    const dest = this.abs(target);

    let existing;
    try {
      existing = fs.lstatSync(dest);
    } catch (e) {
      if (!isENOENT(e)) throw e;
    }
    if (existing) {
      if (h.type === 'directory' && existing.isDirectory()) {
        await this.setMeta(target, h, 'directory');
        this.createdThisLayer.add(target);
        return;
      }
      await this.removeAt(target);
    }
    this.createdThisLayer.add(target);

    switch (h.type) {
      case 'directory':
        fs.mkdirSync(dest, 0o700);
        this.knownDirs.add(target);
        await this.setMeta(target, h, 'directory');
        return;
      case 'file':
      case 'contiguous-file': {
        const fd = fs.openSync(dest, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o600);
        try {
          let written = 0;
          for await (const chunk of body) {
            for (let off = 0; off < chunk.length; ) off += fs.writeSync(fd, chunk, off);
            written += chunk.length;
          }
          if (written !== size) throw new UnsafeArchiveError(`layer ${label}: ${h.name} truncated`);
          if (h.uid || h.gid) fs.fchownSync(fd, h.uid ?? 0, h.gid ?? 0); // we run as root: new files are 0:0
          fs.fchmodSync(fd, (h.mode ?? 0o644) & 0o7777); // after chown, which clears setuid
          if (h.mtime) fs.futimesSync(fd, h.mtime, h.mtime);
        } finally {
          fs.closeSync(fd);
        }
        await this.setXattrs(dest, h);
        return;
      }
      case 'symlink':
        if (!h.linkname || h.linkname.includes('\0')) throw new UnsafeArchiveError(`layer ${label}: bad symlink ${h.name}`);
        // The link text is data, interpreted later inside the container's root: it is never
        // followed here except by resolveInRoot, which keeps it inside.
        fs.symlinkSync(h.linkname, dest);
        await this.setMeta(target, h, 'symlink');
        return;
      case 'link': {
        const linkRel = cleanEntryPath(h.linkname ?? '');
        if (linkRel === '') throw new UnsafeArchiveError(`layer ${label}: hard link ${h.name} to the root`);
        const lp = path.posix.dirname(linkRel);
        const srcParent = await this.resolveInRoot(lp === '.' ? '' : lp, true);
        const srcRel = srcParent ? `${srcParent}/${path.posix.basename(linkRel)}` : path.posix.basename(linkRel);
        let st;
        try {
          st = fs.lstatSync(this.abs(srcRel));
        } catch (e) {
          if (isENOENT(e)) throw new UnsafeArchiveError(`layer ${label}: hard link ${h.name} to missing ${h.linkname}`);
          throw e;
        }
        if (st.isDirectory()) throw new UnsafeArchiveError(`layer ${label}: hard link ${h.name} to a directory`);
        // link(2) does not follow a symlink source: the new name shares that inode, in the root.
        fs.linkSync(this.abs(srcRel), dest);
        return;
      }
      case 'character-device':
      case 'block-device':
      case 'fifo': {
        const t = h.type === 'fifo' ? ['p'] : [h.type === 'character-device' ? 'c' : 'b', String(h.devmajor ?? 0), String(h.devminor ?? 0)];
        // Node has no mknod(2); coreutils' creates the node at exactly `dest` (its parent is resolved).
        await execFileP('mknod', ['-m', ((h.mode ?? 0o600) & 0o777).toString(8), '--', dest, ...t]);
        await this.setMeta(target, h, 'node');
        return;
      }
      default:
        this.logger.debug({ layer: label, entry: h.name, type: h.type }, 'skipping unsupported tar entry type');
        this.createdThisLayer.delete(target);
    }
  }

  /** An opaque directory hides everything lower layers put in it. */
  private async makeOpaque(dirRel: string): Promise<void> {
    let names: string[];
    try {
      const st = await fsp.lstat(this.abs(dirRel));
      if (!st.isDirectory()) return;
      names = await fsp.readdir(this.abs(dirRel));
    } catch (e) {
      if (isENOENT(e)) {
        await this.mkdirs(dirRel);
        return;
      }
      throw e;
    }
    for (const n of names) {
      const child = dirRel ? `${dirRel}/${n}` : n;
      if (!this.createdThisLayer.has(child)) await this.removeAt(child);
    }
  }

  private async setMeta(rel: string, h: tar.Header, kind: 'directory' | 'symlink' | 'node'): Promise<void> {
    const p = this.abs(rel);
    fs.lchownSync(p, h.uid ?? 0, h.gid ?? 0);
    if (kind !== 'symlink') fs.chmodSync(p, (h.mode ?? (kind === 'directory' ? 0o755 : 0o644)) & 0o7777);
    if (h.mtime) {
      if (kind === 'directory') this.dirTimes.set(rel, h.mtime);
      else fs.lutimesSync(p, h.mtime, h.mtime);
    }
    if (kind !== 'symlink') await this.setXattrs(p, h);
  }

  /** PAX SCHILY.xattr.* records. Applied with setfattr when installed; else dropped (logged once). */
  private async setXattrs(p: string, h: tar.Header): Promise<void> {
    const pax = h.pax as Record<string, string> | null | undefined;
    if (!pax) return;
    const xattrs = Object.entries(pax).filter(([k]) => k.startsWith('SCHILY.xattr.'));
    if (!xattrs.length) return;
    if (!(await haveSetfattr())) {
      if (!this.warnedXattr) this.logger.warn({ entry: h.name }, 'image has xattrs but setfattr is not installed: xattrs dropped');
      this.warnedXattr = true;
      return;
    }
    for (const [k, v] of xattrs) {
      // tar-stream decodes PAX values as UTF-8, so binary values (security.capability) can't be
      // recovered exactly; skip those rather than write a corrupt attribute.
      if (v.includes('\ufffd')) {
        this.logger.warn({ entry: h.name, xattr: k.slice(13) }, 'binary xattr value dropped');
        continue;
      }
      await execFileP('setfattr', ['-h', '-n', k.slice(13), '-v', `0x${Buffer.from(v, 'utf8').toString('hex')}`, '--', p]);
    }
  }
}
