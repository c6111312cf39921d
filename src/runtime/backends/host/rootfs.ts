// Root file systems of host containers, from the same erofs image files that pod VMs get as
// disks. Each image is mounted read-only on the host once, under <state>/host/images/<id>,
// however many host pods use it (each pod's mount of it is counted here, as a VM pod attaches an
// image once; the last one out unmounts it). Each container gets an overlay: that mount as the
// lower layer, its writable layer (upper + work) under <root>/host/containers/<id> on disk, so a
// container's writes cost no RAM, merged at <state>/host/containers/<id16>/rootfs. Nothing is
// mounted anywhere else.
//
// After a restart the pods' records say which images they hold (`adoptImage`), and `sweep`
// unmounts and removes every image mount, overlay and writable layer nothing holds.
//
// erofs from a file needs Linux 6.12 (EROFS_FS_BACKED_BY_FILE); older kernels get a loop device
// (`mount -o loop`, which frees it on unmount).
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../../../util/log';
import { run } from '../../../util/exec-file';
import { isMountPoint, mount, mountsUnder, MS_RDONLY, unmount } from './mount';

export interface RootfsImage {
  id: string;
  erofsPath: string;
}

/** Directory name of an image: its digest without the algorithm. */
function imageName(id: string): string {
  const name = id.replace(/^sha256:/, '');
  if (!/^[a-f0-9]{16,128}$/.test(name)) throw new Error(`unexpected image id ${JSON.stringify(id)}`);
  return name;
}

function checkId(id: string): void {
  if (!/^[a-f0-9]{16,128}$/.test(id)) throw new Error(`unexpected container id ${JSON.stringify(id)}`);
}

export class HostRootfs {
  private readonly users = new Map<string, { count: number; mounted: Promise<string> }>();
  readonly imagesDir: string;
  readonly containersDir: string;
  readonly layersDir: string;

  constructor(stateDir: string, rootDir: string, private readonly logger: Logger) {
    // overlay options are split on ',' and ':'
    for (const d of [stateDir, rootDir]) if (/[,:\\]/.test(d)) throw new Error(`${d}: host pods need state and root paths without ',', ':' or '\\'`);
    this.imagesDir = path.join(stateDir, 'images');
    this.containersDir = path.join(stateDir, 'containers');
    this.layersDir = path.join(rootDir, 'containers');
  }

  /** The container's directory in the state dir (short: the shim's socket lives there too). */
  containerDir(id: string): string {
    return path.join(this.containersDir, id.slice(0, 16));
  }

  rootfsOf(id: string): string {
    return path.join(this.containerDir(id), 'rootfs');
  }

  /** Where an image is mounted (whether or not it is now). */
  imageDir(imageId: string): string {
    return path.join(this.imagesDir, imageName(imageId));
  }

  /** Mounts the image (once for all pods) and counts one more user; returns the mount point. */
  async mountImage(image: RootfsImage): Promise<string> {
    const name = imageName(image.id);
    const have = this.users.get(name);
    if (have) {
      have.count++;
      try {
        return await have.mounted;
      } catch (err) {
        have.count--;
        throw err;
      }
    }
    const target = this.imageDir(image.id);
    const mounted = this.mount(image.erofsPath, target);
    const entry = { count: 1, mounted };
    this.users.set(name, entry);
    try {
      return await mounted;
    } catch (err) {
      if (this.users.get(name) === entry && --entry.count <= 0) this.users.delete(name);
      throw err;
    }
  }

  /** After a restart: a pod's record says it holds the image; counted, mounted again when missing. */
  async adoptImage(image: RootfsImage): Promise<string> {
    const name = imageName(image.id);
    const have = this.users.get(name);
    if (have) {
      have.count++;
      return have.mounted;
    }
    const target = this.imageDir(image.id);
    const mounted = isMountPoint(target) ? Promise.resolve(target) : this.mount(image.erofsPath, target);
    this.users.set(name, { count: 1, mounted });
    return mounted;
  }

  private async mount(file: string, target: string): Promise<string> {
    await fsp.mkdir(target, { recursive: true, mode: 0o700 });
    try {
      await mount(file, target, 'erofs', MS_RDONLY, null);
    } catch (err) {
      if ((err as { code?: string }).code !== 'ENOTBLK') throw err;
      await run('mount', ['-t', 'erofs', '-o', 'ro,loop', file, target]); // a kernel before 6.12
    }
    this.logger.debug({ image: file, target }, 'image mounted for host containers');
    return target;
  }

  /** One user less; the last one unmounts the image. */
  async unmountImage(imageId: string): Promise<void> {
    const name = imageName(imageId);
    const have = this.users.get(name);
    if (!have || --have.count > 0) return;
    this.users.delete(name);
    const target = this.imageDir(imageId);
    await unmount(target);
    await fsp.rmdir(target).catch(() => undefined);
  }

  /** The container's overlay root file system on `lower` (an image mount); undone if any step fails. */
  async createOverlay(id: string, lower: string): Promise<string> {
    checkId(id);
    if (path.dirname(lower) !== this.imagesDir) throw new Error(`${lower} is not an image mounted for host containers`);
    const layer = path.join(this.layersDir, id);
    const merged = this.rootfsOf(id);
    try {
      await fsp.mkdir(path.join(layer, 'upper'), { recursive: true, mode: 0o755 });
      await fsp.mkdir(path.join(layer, 'work'), { recursive: true, mode: 0o700 });
      await fsp.mkdir(merged, { recursive: true, mode: 0o755 });
      await mount('overlay', merged, 'overlay', 0, `lowerdir=${lower},upperdir=${layer}/upper,workdir=${layer}/work`);
      return merged;
    } catch (err) {
      await this.removeOverlay(id).catch(() => undefined);
      throw err;
    }
  }

  /** Unmounts the container's root file system and deletes it, its directory and its writable layer. */
  async removeOverlay(id: string): Promise<void> {
    checkId(id);
    const dir = this.containerDir(id);
    for (const m of mountsUnder(dir)) await unmount(m);
    await fsp.rm(dir, { recursive: true, force: true });
    await fsp.rm(path.join(this.layersDir, id), { recursive: true, force: true });
  }

  /** Bytes and inodes of the container's writable layer (its upper dir). */
  async usage(id: string): Promise<{ bytes: number; inodes: number }> {
    let bytes = 0;
    let inodes = 0;
    const walk = async (dir: string, depth: number): Promise<void> => {
      if (depth > 64 || inodes > 1_000_000) return;
      let entries;
      try {
        entries = await fsp.readdir(dir, { withFileTypes: true });
      } catch {
        return;
      }
      for (const e of entries) {
        inodes++;
        const p = path.join(dir, e.name);
        if (e.isDirectory()) await walk(p, depth + 1);
        else bytes += await fsp.lstat(p).then((st) => st.blocks * 512).catch(() => 0);
      }
    };
    await walk(path.join(this.layersDir, id, 'upper'), 0);
    return { bytes, inodes };
  }

  /**
   * Removes what nothing holds (after a restart, once the pods adopted their images): image
   * mounts no pod counts, overlays and writable layers of containers not in `keep` (full ids).
   */
  async sweep(keep: Set<string>): Promise<void> {
    const keep16 = new Set([...keep].map((k) => k.slice(0, 16)));
    for (const m of mountsUnder(this.containersDir)) {
      if (!keep16.has(path.relative(this.containersDir, m).split(path.sep)[0])) await unmount(m);
    }
    for (const m of mountsUnder(this.imagesDir)) {
      if (!this.users.has(path.relative(this.imagesDir, m).split(path.sep)[0])) await unmount(m);
    }
    for (const [dir, ids] of [[this.containersDir, keep16], [this.layersDir, keep]] as const) {
      for (const name of await fsp.readdir(dir).catch(() => [] as string[])) {
        if (ids.has(name)) continue;
        this.logger.warn({ dir: path.join(dir, name) }, 'removing a host container left behind');
        await fsp.rm(path.join(dir, name), { recursive: true, force: true });
      }
    }
    for (const name of await fsp.readdir(this.imagesDir).catch(() => [] as string[])) {
      if (!this.users.has(name)) await fsp.rmdir(path.join(this.imagesDir, name)).catch(() => undefined);
    }
  }
}
