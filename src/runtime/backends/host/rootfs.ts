// Root file systems of host containers, from the same erofs image files that pod VMs get as
// disks. Each image is mounted read-only on the host once, under <state>/host/images/<id>,
// however many containers use it (counted here; the last one out unmounts it). Each container
// gets an overlay: that mount as the lower layer, its writable layer (upper + work) under
// <root>/host/containers/<id> on disk, so a container's writes cost no RAM, merged at
// <state>/host/containers/<id16>/rootfs. Nothing is mounted anywhere else.
//
// After a crash the mount table is the truth: `restore` keeps what the surviving containers
// use and unmounts and removes everything else under both directories.
//
// erofs from a file needs Linux 6.12 (EROFS_FS_BACKED_BY_FILE); older kernels get a loop device
// (`mount -o loop`, which frees it on unmount).
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../../../util/log';
import { run } from '../../../util/exec-file';
import { mount, mountsUnder, MS_RDONLY, unmount } from './mount';

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

  /** Mounts the image (once) and counts one more user; returns the mount point. */
  private async acquire(image: RootfsImage): Promise<string> {
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
    const target = path.join(this.imagesDir, name);
    const mounted = this.mountImage(image.erofsPath, target);
    const entry = { count: 1, mounted };
    this.users.set(name, entry);
    try {
      return await mounted;
    } catch (err) {
      if (this.users.get(name) === entry && --entry.count <= 0) this.users.delete(name);
      throw err;
    }
  }

  private async mountImage(file: string, target: string): Promise<string> {
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
  private async release(imageId: string): Promise<void> {
    const name = imageName(imageId);
    const have = this.users.get(name);
    if (!have || --have.count > 0) return;
    this.users.delete(name);
    const target = path.join(this.imagesDir, name);
    await unmount(target);
    await fsp.rmdir(target).catch(() => undefined);
  }

  /** The container's overlay root file system; undone if any step fails. */
  async create(id: string, image: RootfsImage): Promise<string> {
    checkId(id);
    const lower = await this.acquire(image);
    const layer = path.join(this.layersDir, id);
    const merged = this.rootfsOf(id);
    try {
      await fsp.mkdir(path.join(layer, 'upper'), { recursive: true, mode: 0o755 });
      await fsp.mkdir(path.join(layer, 'work'), { recursive: true, mode: 0o700 });
      await fsp.mkdir(merged, { recursive: true, mode: 0o755 });
      await mount('overlay', merged, 'overlay', 0, `lowerdir=${lower},upperdir=${layer}/upper,workdir=${layer}/work`);
      return merged;
    } catch (err) {
      await this.removeLayer(id).catch(() => undefined);
      await this.release(image.id).catch(() => undefined);
      throw err;
    }
  }

  private async removeLayer(id: string): Promise<void> {
    const dir = this.containerDir(id);
    for (const m of mountsUnder(dir)) await unmount(m);
    await fsp.rm(dir, { recursive: true, force: true });
    await fsp.rm(path.join(this.layersDir, id), { recursive: true, force: true });
  }

  /** Unmounts and deletes the container's root file system and writable layer. */
  async remove(id: string, imageId: string): Promise<void> {
    checkId(id);
    await this.removeLayer(id);
    await this.release(imageId);
  }

  /** Bytes and inodes of the container's writable layer (its upper dir). */
  async usage(id: string): Promise<{ bytes: number; inodes: number }> {
    let bytes = 0;
    let inodes = 0;
    const walk = async (dir: string, depth: number): Promise<void> => {
      if (depth > 64) return;
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
   * After a restart: counts the images of the containers that still exist (mounting what is
   * missing, after a reboot) and removes every other mount, overlay and writable layer.
   */
  async restore(containers: Array<{ id: string; image: RootfsImage }>): Promise<void> {
    const keep = new Set(containers.map((c) => c.id));
    const keepImages = new Set(containers.map((c) => imageName(c.image.id)));
    for (const m of mountsUnder(this.containersDir)) {
      const id = path.relative(this.containersDir, m).split(path.sep)[0];
      if (![...keep].some((k) => k.startsWith(id))) await unmount(m);
    }
    for (const m of mountsUnder(this.imagesDir)) {
      if (!keepImages.has(path.relative(this.imagesDir, m).split(path.sep)[0])) await unmount(m);
    }
    for (const [dir, full] of [[this.containersDir, false], [this.layersDir, true]] as const) {
      for (const name of await fsp.readdir(dir).catch(() => [] as string[])) {
        const known = full ? keep.has(name) : [...keep].some((k) => k.slice(0, 16) === name);
        if (!known) {
          this.logger.warn({ dir: path.join(dir, name) }, 'removing a host container left behind');
          await fsp.rm(path.join(dir, name), { recursive: true, force: true });
        }
      }
    }
    for (const name of await fsp.readdir(this.imagesDir).catch(() => [] as string[])) {
      if (!keepImages.has(name)) await fsp.rmdir(path.join(this.imagesDir, name)).catch(() => undefined);
    }
    const mounted = new Set(mountsUnder(this.imagesDir).concat(mountsUnder(this.containersDir)));
    for (const c of containers) {
      const name = imageName(c.image.id);
      const target = path.join(this.imagesDir, name);
      const have = this.users.get(name);
      if (have) have.count++;
      else this.users.set(name, { count: 1, mounted: mounted.has(target) ? Promise.resolve(target) : this.mountImage(c.image.erofsPath, target) });
      await this.users.get(name)!.mounted.catch((err) => this.logger.error({ image: c.image.id, err }, 'cannot mount an image of a host container'));
      const merged = this.rootfsOf(c.id);
      if (!mounted.has(merged)) {
        // after a reboot: the writable layer is still there, the overlay is not
        await fsp.mkdir(merged, { recursive: true });
        const layer = path.join(this.layersDir, c.id);
        await mount('overlay', merged, 'overlay', 0, `lowerdir=${target},upperdir=${layer}/upper,workdir=${layer}/work`)
          .catch((err) => this.logger.error({ container: c.id, err }, 'cannot mount a host container\'s root file system again'));
      }
    }
  }
}
