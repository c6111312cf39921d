// NFS: nothing on the host at all. The guest kernel mounts the export over the pod network
// (agent `nfs.mount`: v4.1 by default, v3 with nolock); detach is a guest unmount.
import type { VolumeDescriptor } from '../descriptor';
import type { AttachHandle, AttachOptions, PodVolumeTarget, VolumeDriver } from '../volume-driver';
import { guestUnmount, wrap } from './block-steps';
import { hasCode } from '../../src/util/errors';

type NfsDesc = Extract<VolumeDescriptor, { kind: 'nfs' }>;

/** without a caller's deadline: the agent gives up after 15 s without an answer from the server (plus loading the guest's NFS modules) */
const NFS_MOUNT_TIMEOUT_MS = 40_000;

export class NfsDriver implements VolumeDriver<NfsDesc> {
  readonly kind = 'nfs' as const;

  async validate(): Promise<void> {
    // the descriptor check is all: the server is reached from the pod network, not the host's
  }

  identity(desc: NfsDesc): string {
    return `nfs:${desc.nfs.server}:${desc.nfs.export}`;
  }

  async attach(target: PodVolumeTarget, desc: NfsDesc, opts: AttachOptions): Promise<AttachHandle> {
    const options = desc.mountOptions.filter((o) => o !== 'ro' && o !== 'rw');
    try {
      await target.mountNfs({
        server: desc.nfs.server, export: desc.nfs.export, version: desc.nfs.version,
        options: desc.nfs.version === '3' ? [...options, 'nolock'] : options,
        readonly: opts.readonly, target: opts.guestPath,
      }, opts.timeoutMs ?? NFS_MOUNT_TIMEOUT_MS);
    } catch (err) {
      throw wrap(`mounting NFS ${desc.nfs.server}:${desc.nfs.export} in the guest`, err,
        hasCode(err, 'failed_precondition', 'deadline_exceeded') ? 'unavailable' : undefined);
    }
    return { kind: 'nfs', guestPath: opts.guestPath, readonly: opts.readonly, mounted: true };
  }

  async detach(target: PodVolumeTarget, handle: AttachHandle): Promise<void> {
    if (target.alive() && handle.mounted) await guestUnmount(target, handle.guestPath);
  }
}
