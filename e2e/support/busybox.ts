// The setup most e2e files share: a local registry serving the busybox test image as
// e2e/busybox:latest and a scratch daemon configured (certs.d) to pull from it, started in one
// call and stopped in one. One place, so how the image is served or the daemon is pointed at
// it changes for every file at once; a setup that fails half-way stops what it started, since
// a test file's afterAll never sees the parts of a beforeAll that threw.
import type { TarEntry } from '../../test/support/images';
import { pushBusybox } from '../../test/support/images';
import { type Registry, startRegistry } from '../../test/support/registry';
import { type DaemonOptions, TestDaemon } from './daemon';

export interface BusyboxDaemon {
  registry: Registry;
  d: TestDaemon;
  /** the pushed image's reference: `<registry>/e2e/busybox:latest` */
  image: string;
  /** Removes the daemon's pods, stops it and the registry, deletes their scratch dirs. */
  close(): Promise<void>;
}

export interface BusyboxOptions {
  /** extra files in the image (a web root, a CGI script …) */
  extra?: TarEntry[];
  /** pull the image before returning (default true); false when a test times its own pull */
  pull?: boolean;
}

/** Starts a registry holding busybox and a daemon (`opts`, plus the registry in certs.d). */
export async function startBusyboxDaemon(opts: DaemonOptions = {}, image: BusyboxOptions = {}): Promise<BusyboxDaemon> {
  const registry = await startRegistry();
  let d: TestDaemon | undefined;
  try {
    await pushBusybox(registry, 'e2e/busybox', 'latest', { extra: image.extra });
    const ref = `${registry.host}/e2e/busybox:latest`;
    d = await TestDaemon.start({ ...opts, registries: { ...opts.registries, [registry.host]: `http://${registry.host}` } });
    if (image.pull !== false) {
      const pulled = await d.image('PullImage', { image: { image: ref } });
      if (!pulled.image_ref) throw new Error(`PullImage of ${ref} answered no image_ref`);
    }
    const daemon = d;
    return { registry, d: daemon, image: ref, close: async () => { await daemon.destroy(); await registry.stop(); } };
  } catch (err) {
    await d?.destroy().catch(() => undefined);
    await registry.stop().catch(() => undefined);
    throw err;
  }
}
