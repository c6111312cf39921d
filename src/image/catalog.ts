// The image catalog: which images exist, under which names (tags, digests), which are in use
// by containers, and what may be deleted. Images removed while a container still uses them stay
// hidden until released; garbage collection deletes blobs and erofs files nothing refers to.
// The pull (pull.ts) adds images through bind(); everything else only reads. Layout under
// `root`: erofs/<id hex>.erofs, metadata.json (metadata.ts); blobs are the content store's.
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Logger } from '../util/log';
import type { ContentStore } from './content-store';
import { MetadataStore, type StoredImage } from './metadata';
import { formatReference, parseReference, type Reference } from './reference';
import type { ResolvedImage } from './registry';

export interface ImageRecord {
  id: string;
  repoTags: string[];
  repoDigests: string[];
  size: number;
  config: any;
  user: { uid?: number; username?: string };
  pinned: boolean;
  erofsPath: string;
  createdAt: number;
}

const ID_RE = /^(?:sha256:)?([a-f0-9]{64})$/;
const PREFIX_RE = /^(?:sha256:)?([a-f0-9]{12,63})$/;

/** Parses an OCI config `User` ('1000', 'nobody', '1000:50', 'user:group'). */
export function parseUser(user: unknown): { uid?: number; username?: string } {
  if (typeof user !== 'string' || user === '') return {};
  const u = user.split(':')[0];
  if (/^\d+$/.test(u)) return { uid: Number(u) };
  return u ? { username: u } : {};
}

export interface Entry {
  stored: StoredImage;
  config: any;
}

export class ImageCatalog {
  private readonly meta: MetadataStore;
  private images = new Map<string, Entry>(); // by id, including hidden deleted-but-in-use ones
  private inUse = new Map<string, number>();
  /** Pulls running (blobs they wrote may not be referenced yet) and the ids they target. */
  private activePulls = 0;
  private pulling = new Map<string, number>();

  constructor(
    private readonly root: string,
    readonly erofsDir: string,
    private readonly content: ContentStore,
    private readonly pinnedRefs: Set<string>,
    private readonly log: Logger,
  ) {
    this.meta = new MetadataStore(path.join(root, 'metadata.json'));
  }

  /** Loads the index; forgets images whose config or erofs file is gone. */
  async load(): Promise<void> {
    const stored = await this.meta.load();
    let dropped = false;
    for (const s of stored) {
      const erofs = path.join(this.erofsDir, s.erofs);
      try {
        const config = JSON.parse((await this.content.read(s.id)).toString('utf8'));
        await fsp.access(erofs);
        this.images.set(s.id, { stored: s, config });
      } catch {
        this.log.warn({ id: s.id }, 'image content missing, forgetting the image');
        dropped = true;
      }
    }
    if (dropped) await this.save();
  }

  // ---- lookups -------------------------------------------------------------------------

  private visible(): Entry[] {
    return [...this.images.values()].filter((e) => !e.stored.deleted);
  }

  /** Finds the image and how it was named: by id, tag or digest. */
  private lookup(refOrId: string): { entry: Entry; kind: 'id' | 'tag' | 'digest'; name: string } | undefined {
    if (typeof refOrId !== 'string' || refOrId === '') return undefined;
    const id = ID_RE.exec(refOrId);
    if (id) {
      const e = this.images.get(`sha256:${id[1]}`);
      if (e && !e.stored.deleted) return { entry: e, kind: 'id', name: e.stored.id };
    }
    let ref: Reference | undefined;
    try {
      ref = parseReference(refOrId);
    } catch {
      ref = undefined;
    }
    if (ref) {
      const name = formatReference(ref);
      for (const e of this.visible()) {
        if (ref.digest ? e.stored.repoDigests.includes(name) : e.stored.repoTags.includes(name)) return { entry: e, kind: ref.digest ? 'digest' : 'tag', name };
      }
    }
    const prefix = PREFIX_RE.exec(refOrId);
    if (prefix && !id) {
      const hits = this.visible().filter((e) => e.stored.id.startsWith(`sha256:${prefix[1]}`));
      if (hits.length === 1) return { entry: hits[0], kind: 'id', name: hits[0].stored.id };
    }
    return undefined;
  }

  private toRecord(e: Entry): ImageRecord {
    const s = e.stored;
    return {
      id: s.id,
      repoTags: [...s.repoTags],
      repoDigests: [...s.repoDigests],
      size: s.size,
      config: e.config,
      user: parseUser(e.config?.config?.User),
      pinned: s.repoTags.some((t) => this.pinnedRefs.has(t)) || s.repoDigests.some((d) => this.pinnedRefs.has(d)),
      erofsPath: path.join(this.erofsDir, s.erofs),
      createdAt: s.createdAt,
    };
  }

  resolve(refOrId: string): ImageRecord | undefined {
    const hit = this.lookup(refOrId);
    return hit ? this.toRecord(hit.entry) : undefined;
  }

  list(filterRef?: string): ImageRecord[] {
    if (filterRef) {
      const r = this.resolve(filterRef);
      return r ? [r] : [];
    }
    return this.visible()
      .sort((a, b) => a.stored.createdAt - b.stored.createdAt)
      .map((e) => this.toRecord(e));
  }

  get(id: string): Entry | undefined {
    return this.images.get(id);
  }

  async erofsExists(s: StoredImage): Promise<boolean> {
    return fsp.access(path.join(this.erofsDir, s.erofs)).then(() => true, () => false);
  }

  // ---- what pulls tell the catalog -------------------------------------------------------

  /** A pull began: until pullEnded(), blobs nothing refers to yet are not garbage. */
  pullStarted(): void {
    this.activePulls++;
  }

  pullEnded(): void {
    this.activePulls--;
  }

  /** A pull targets image `id`: it is busy (not reaped) until unholdForPull(). */
  holdForPull(id: string): void {
    this.pulling.set(id, (this.pulling.get(id) ?? 0) + 1);
  }

  unholdForPull(id: string): void {
    const n = (this.pulling.get(id) ?? 1) - 1;
    if (n > 0) this.pulling.set(id, n);
    else this.pulling.delete(id);
  }

  /**
   * Records a pulled image (its erofs file and blobs durable) and points the names at it,
   * moving a tag away from an older image if needed; returns its record.
   */
  async bind(id: string, r: ResolvedImage, config: any, tag: string | undefined, digestRef: string): Promise<ImageRecord> {
    const entry = this.images.get(id) ?? this.addEntry(id, r, config);
    entry.stored.deleted = false;
    const orphaned: Entry[] = [];
    if (tag) {
      for (const other of this.images.values()) {
        if (other !== entry && other.stored.repoTags.includes(tag)) {
          other.stored.repoTags = other.stored.repoTags.filter((t) => t !== tag);
          if (other.stored.repoTags.length === 0 && other.stored.repoDigests.length === 0) orphaned.push(other);
        }
      }
      if (!entry.stored.repoTags.includes(tag)) entry.stored.repoTags.push(tag);
    }
    if (!entry.stored.repoDigests.includes(digestRef)) entry.stored.repoDigests.push(digestRef);
    for (const o of orphaned) this.markDeleted(o);
    await this.save();
    for (const o of orphaned) await this.reap(o.stored.id);
    return this.toRecord(entry);
  }

  private addEntry(id: string, r: ResolvedImage, config: any): Entry {
    const m = r.manifest;
    const stored: StoredImage = {
      id,
      repoTags: [],
      repoDigests: [],
      // Like containerd: compressed layers plus config.
      size: m.layers.reduce((n, l) => n + l.size, 0) + m.config.size,
      manifestDigest: r.manifestDigest,
      topDigest: r.topDigest,
      layers: m.layers.map((l) => l.digest),
      erofs: `${id.slice(7)}.erofs`,
      createdAt: Date.now(),
    };
    const e = { stored, config };
    this.images.set(id, e);
    return e;
  }

  // ---- removal and in-use tracking -----------------------------------------------------

  async remove(refOrId: string): Promise<void> {
    const hit = this.lookup(refOrId);
    if (!hit) return;
    const s = hit.entry.stored;
    if (hit.kind === 'id') {
      s.repoTags = [];
      s.repoDigests = [];
    } else if (hit.kind === 'tag') {
      s.repoTags = s.repoTags.filter((t) => t !== hit.name);
      // Removing the last tag removes the image, as `docker rmi`/`crictl rmi` users expect.
      if (s.repoTags.length === 0) s.repoDigests = [];
    } else {
      s.repoDigests = s.repoDigests.filter((d) => d !== hit.name);
    }
    if (s.repoTags.length === 0 && s.repoDigests.length === 0) this.markDeleted(hit.entry);
    await this.save();
    await this.reap(s.id);
  }

  private markDeleted(e: Entry): void {
    e.stored.deleted = true;
    e.stored.repoTags = [];
    e.stored.repoDigests = [];
  }

  /** Deletes a hidden image's files once no container uses it. */
  private async reap(id: string): Promise<void> {
    const e = this.images.get(id);
    if (!e || !e.stored.deleted || this.busy(id)) return;
    this.images.delete(id);
    await this.save();
    await fsp.rm(path.join(this.erofsDir, e.stored.erofs), { force: true });
    await this.collectGarbage(false);
    this.log.info({ id }, 'image deleted');
  }

  acquire(id: string): void {
    const e = this.lookup(id)?.entry ?? this.images.get(id);
    const key = e?.stored.id ?? id;
    this.inUse.set(key, (this.inUse.get(key) ?? 0) + 1);
  }

  release(id: string): void {
    const e = this.lookup(id)?.entry ?? this.images.get(id);
    const key = e?.stored.id ?? id;
    const n = (this.inUse.get(key) ?? 0) - 1;
    if (n > 0) {
      this.inUse.set(key, n);
      return;
    }
    this.inUse.delete(key);
    this.reap(key).catch((err) => this.log.error({ id: key, err }, 'deferred image delete failed'));
  }

  private busy(id: string): boolean {
    return (this.inUse.get(id) ?? 0) > 0 || this.pulling.has(id);
  }

  /**
   * Deletes blobs and erofs files that no image refers to. With `dropRemoved`, also images
   * that were removed while in use and that no container holds now: after a restart, call it
   * once the existing containers have re-acquired their images (init() keeps them).
   */
  async collectGarbage(dropRemoved = true): Promise<void> {
    if (dropRemoved) {
      let changed = false;
      for (const [id, e] of this.images) {
        if (e.stored.deleted && !this.busy(id)) {
          this.images.delete(id);
          changed = true;
        }
      }
      if (changed) await this.save();
    }
    const keepBlobs = new Set<string>();
    const keepErofs = new Set<string>();
    for (const e of this.images.values()) {
      keepBlobs.add(e.stored.id).add(e.stored.manifestDigest).add(e.stored.topDigest);
      e.stored.layers.forEach((l) => keepBlobs.add(l));
      keepErofs.add(e.stored.erofs);
    }
    // A pull in progress owns blobs not yet in any record: skip the blob sweep meanwhile.
    if (this.activePulls === 0) {
      for (const d of await this.content.list()) if (!keepBlobs.has(d)) await this.content.delete(d);
    }
    for (const f of await fsp.readdir(this.erofsDir).catch(() => [] as string[])) {
      if (f.endsWith('.erofs') && !keepErofs.has(f) && !this.busy(`sha256:${f.slice(0, 64)}`)) await fsp.rm(path.join(this.erofsDir, f), { force: true });
    }
  }

  private save(): Promise<void> {
    return this.meta.save([...this.images.values()].map((e) => e.stored));
  }

}

/** Disk bytes (allocated blocks) and inodes used under `dir`, not crossing into other filesystems. */
export async function dirUsage(dir: string): Promise<{ bytes: number; inodes: number }> {
  let bytes = 0;
  let inodes = 0;
  const seen = new Set<string>();
  const rootDev = (await fsp.lstat(dir)).dev;
  const walk = async (p: string): Promise<void> => {
    let st;
    try {
      st = await fsp.lstat(p);
    } catch {
      return;
    }
    if (st.dev !== rootDev) return;
    const key = `${st.ino}`;
    if (!seen.has(key)) {
      seen.add(key);
      bytes += st.blocks * 512;
      inodes++;
    }
    if (st.isDirectory()) {
      const names = await fsp.readdir(p).catch(() => [] as string[]);
      for (const n of names) await walk(path.join(p, n));
    }
  };
  await walk(dir);
  return { bytes, inodes };
}
