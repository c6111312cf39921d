// Where a host container lives on the host, and how one is taken down whatever is left of it.
// Each container has a directory <state>/host/containers/<id16> (HostRootfs.containerDir):
// its bundle (config.json), the shim's socket and log, the exit file, its overlay root, and an
// owner file naming its pod, which is how a restarted daemon finds the containers of pods that
// no record knows any more. Shared by every host pod of a daemon.
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../../../util/log';
import { run } from '../../../util/exec-file';
import type { HostRootfs } from './rootfs';
import { ShimConnection } from './shim-client';

export interface ContainerOwner {
  sandbox: string;
  container: string;
}

export class HostContainers {
  constructor(
    readonly launcher: string,
    readonly rootfs: HostRootfs,
    /** libcontainer's state directory */
    readonly ociRoot: string,
    private readonly logger: Logger,
  ) {}

  dir(id: string): string {
    return this.rootfs.containerDir(id);
  }

  socket(id: string): string {
    return path.join(this.dir(id), 'shim.sock');
  }

  exitFile(id: string): string {
    return path.join(this.dir(id), 'exit.json');
  }

  /** libcontainer's name of the container (its state directory under ociRoot) */
  ociId(id: string): string {
    return id.slice(0, 16);
  }

  async writeOwner(o: ContainerOwner): Promise<void> {
    await fsp.writeFile(path.join(this.dir(o.container), 'owner.json'), JSON.stringify(o), { mode: 0o600 });
  }

  /** Every container directory with its owner (undefined: no readable owner file). */
  async all(): Promise<Array<{ name: string; owner?: ContainerOwner }>> {
    const out: Array<{ name: string; owner?: ContainerOwner }> = [];
    for (const name of await fsp.readdir(this.rootfs.containersDir).catch(() => [] as string[])) {
      let owner: ContainerOwner | undefined;
      try {
        const o = JSON.parse(await fsp.readFile(path.join(this.rootfs.containersDir, name, 'owner.json'), 'utf8'));
        if (typeof o?.sandbox === 'string' && typeof o?.container === 'string' && o.container.startsWith(name)) owner = o;
      } catch {
        /* a container whose create did not get that far */
      }
      out.push({ name, owner });
    }
    return out;
  }

  /** The containers of one pod (full ids). */
  async of(sandboxId: string): Promise<string[]> {
    return (await this.all()).flatMap((c) => (c.owner?.sandbox === sandboxId ? [c.owner.container] : []));
  }

  /**
   * Takes a container down whatever is left of it: the shim deletes it (killing what still
   * runs) and exits; without a shim, `podvisor-launch delete` removes libcontainer's state and
   * cgroup; then the overlay, the writable layer and the directory go. Idempotent.
   */
  async destroy(id: string, conn?: ShimConnection): Promise<void> {
    let deleted = false;
    try {
      const c = conn && !conn.isClosed ? conn : await ShimConnection.connect(this.socket(id), 2000);
      await c.request('delete', {}, 20_000);
      c.close();
      deleted = true;
    } catch {
      /* no shim (it died, or the create failed before it ran) */
    }
    if (!deleted) {
      await run(this.launcher, ['delete', '--oci-root', this.ociRoot, '--id', this.ociId(id)]).catch((err) => {
        this.logger.debug({ container: id, err: err }, 'podvisor-launch delete');
      });
    }
    await this.rootfs.removeOverlay(id);
  }
}
