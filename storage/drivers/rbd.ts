// Ceph RBD through QEMU's own rbd driver (librbd inside QEMU; the host kernel has no krbd):
// the cephx key goes to QEMU only as a QMP `secret` object (never a command line or a file),
// then `blockdev-add {driver: rbd}` + a raw format node + scsi-hd. Before touching the VM we
// check the image from Node (librados/librbd via koffi) so a wrong monitor, a bad key or a
// missing image gives a clear error quickly and leaves the VM untouched; QEMU itself is bounded
// by the timeouts in the client conf file (rbd-client.conf) should it still fail.
import fs from 'node:fs';
import { withRbd } from '../ceph/rbd';
import type { VolumeDescriptor } from '../descriptor';
import { parseMonitor, readRbdKey } from '../descriptor';
import { StorageError } from '../errors';
import type { AttachHandle, AttachOptions, PodVolumeTarget, VolumeDriver } from '../volume-driver';
import { guestMountDisk, plugScsi, qmpNames, teardown, withRollback, wrap } from './scsi';
import { status } from '@grpc/grpc-js';

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
    const n = qmpNames(opts.tag);
    const h: AttachHandle = { kind: 'rbd', guestPath: opts.guestPath, readonly: opts.readonly, nodes: [], mounted: false };
    const where = `RBD image ${r.pool}/${r.namespace ? r.namespace + '/' : ''}${r.image}`;
    await withRollback(target, h, async () => {
      await target.qmp('object-add', { 'qom-type': 'secret', id: n.secret, data: key, format: 'base64' });
      h.secret = n.secret;
      const rbdNode: Record<string, unknown> = {
        driver: 'rbd', 'node-name': n.file, pool: r.pool, image: r.image, user: r.user,
        'key-secret': n.secret, 'auth-client-required': ['cephx'], conf: this.o.confFile,
        server: r.monitors.map((m, i) => {
          const { host, port } = parseMonitor(m, `rbd.monitors[${i}]`);
          return { host, port: String(port) };
        }),
        'read-only': opts.readonly,
      };
      if (r.namespace) rbdNode.namespace = r.namespace;
      await target.qmp('blockdev-add', rbdNode).catch((e) => { throw wrap(`QEMU opening ${where}`, e, 'unavailable'); });
      h.nodes!.push(n.file);
      await target.qmp('blockdev-add', { driver: 'raw', 'node-name': n.format, file: n.file, 'read-only': opts.readonly });
      h.nodes!.push(n.format);
      const addr = await plugScsi(target, n.format, n.device).catch((e) => { throw wrap(`plugging ${where}`, e, 'internal'); });
      h.device = n.device;
      h.scsiId = addr.scsiId;
      h.lun = addr.lun;
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
