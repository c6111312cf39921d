// Ceph RBD through the VM's own rbd client (QEMU's rbd driver, librbd inside QEMU; the host
// kernel has no krbd): an `rbd` block source carrying the cephx key, which the QEMU driver hands
// over only as a secret object (never a command line or a file). Before touching the VM we
// check the image from Node (librados/librbd via koffi) so a wrong monitor, a bad key or a
// missing image gives a clear error quickly and leaves the VM untouched; QEMU itself is bounded
// by the timeouts in the client conf file (rbd-client.conf) should it still fail.
import fs from 'node:fs';
import { withRbd } from '../ceph/rbd';
import type { VolumeDescriptor } from '../descriptor';
import { parseMonitor, readRbdKey } from '../descriptor';
import { StorageError } from '../errors';
import type { AttachHandle, AttachOptions, PodVolumeTarget, VolumeDriver } from '../volume-driver';
import { attachSource, guestMountDisk, teardown, withRollback, wrap } from './block-steps';
import type { BlockSource } from '../../src/util/block-source';
type RbdDesc = Extract<VolumeDescriptor, { kind: 'rbd' }>;

export interface RbdDriverOptions {
  /** ceph client conf handed to QEMU (timeouts only, no secrets); see writeRbdClientConf */
  confFile: string;
  /** check monitors/key/image through librados before attaching (default true) */
  preflight?: boolean;
  /** bound for the preflight connection, s */
  timeoutSec?: number;
}

/** Writes the conf QEMU's librbd reads: bounded connect/mon timeouts, nothing secret. */
export function writeRbdClientConf(file: string, timeoutSec = 15): void {
  fs.writeFileSync(file, [
    '# written by podvisor: QEMU\'s librbd reads this for attached RBD volumes. No secrets here:',
    '# keys reach QEMU only through QMP secret objects.',
    '[global]',
    `client_mount_timeout = ${timeoutSec}`,
    `rados_mon_op_timeout = ${timeoutSec}`,
    'auth_client_required = cephx',
    'log_to_stderr = false',
    'err_to_stderr = false',
    '',
  ].join('\n'), { mode: 0o644 });
}

export class RbdDriver implements VolumeDriver<RbdDesc> {
  readonly kind = 'rbd' as const;
  constructor(private readonly o: RbdDriverOptions) {}

  async validate(desc: RbdDesc): Promise<void> {
    await readRbdKey(desc.rbd.secret, desc.rbd.user);
  }

  identity(desc: RbdDesc): string {
    // pool/namespace/image: the same image must never be attached twice to one VM
    return `rbd:${desc.rbd.pool}/${desc.rbd.namespace ?? ''}/${desc.rbd.image}`;
  }

  async attach(target: PodVolumeTarget, desc: RbdDesc, opts: AttachOptions): Promise<AttachHandle> {
    const r = desc.rbd;
    const key = await readRbdKey(r.secret, r.user);
    if (this.o.preflight !== false) {
      const info = await withRbd({ monitors: r.monitors, user: r.user, key, timeoutSec: this.o.timeoutSec ?? 10 },
        (rbd) => rbd.info({ pool: r.pool, namespace: r.namespace, image: r.image }));
      if (info.size <= 0) throw new StorageError('failed_precondition', `RBD image ${r.pool}/${r.image} is empty`);
    }
    const h: AttachHandle = { kind: 'rbd', guestPath: opts.guestPath, readonly: opts.readonly, mounted: false };
    const where = `RBD image ${r.pool}/${r.namespace ? r.namespace + '/' : ''}${r.image}`;
    const source: BlockSource = {
      kind: 'rbd', pool: r.pool, namespace: r.namespace, image: r.image, user: r.user, key, confFile: this.o.confFile,
      monitors: r.monitors.map((m, i) => parseMonitor(m, `rbd.monitors[${i}]`)),
    };
    await withRollback(target, h, async () => {
      const addr = await attachSource(target, h, source, opts, { open: `QEMU opening ${where}`, plug: `plugging ${where}` });
      const m = await guestMountDisk(target, addr, desc, opts).catch((e) => { throw wrap(`mounting ${where} in the guest`, e); });
      h.guestPath = m.guestPath;
      h.mounted = m.mounted;
    });
    return h;
  }

  async detach(target: PodVolumeTarget, handle: AttachHandle): Promise<void> {
    await teardown(target, handle);
  }
}
