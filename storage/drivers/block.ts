// Raw host block devices: the pod's VM opens the device itself (a `host_device` block source;
// QEMU: O_DIRECT, native or io_uring AIO, plugged as scsi-hd); the guest mounts it. The host
// never mounts it, and we refuse devices the host is using (mounted, held by dm/md).
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import type { VolumeDescriptor } from '../descriptor';
import { invalid, notFound, precondition, StorageError } from '../errors';
import type { AttachHandle, AttachOptions, PodVolumeTarget, VolumeDriver } from '../volume-driver';
import { attachSource, guestMountDisk, teardown, withRollback, wrap } from './block-steps';

type BlockDesc = Extract<VolumeDescriptor, { kind: 'block' }>;

/** Checks that `device` is a block device the host is not using; returns its real path. */
export async function checkHostBlockDevice(device: string, readonly: boolean): Promise<string> {
  let real: string;
  try {
    real = await fsp.realpath(device);
  } catch {
    throw notFound(`block device ${device} does not exist`);
  }
  const st = await fsp.stat(real);
  if (!st.isBlockDevice()) throw invalid(`${device} is not a block device`);
  const major = Math.floor(st.rdev / 256) & 0xfff;
  const minor = (st.rdev & 0xff) | ((Math.floor(st.rdev / 4096) & 0xfff00));
  const devno = `${major}:${minor}`;
  const mountinfo = await fsp.readFile('/proc/self/mountinfo', 'utf8');
  if (mountinfo.split('\n').some((l) => l.split(' ')[2] === devno)) throw precondition(`block device ${device} (${devno}) is mounted on the host; refusing to hand it to a VM`);
  const holders = await fsp.readdir(`/sys/dev/block/${devno}/holders`).catch(() => [] as string[]);
  if (holders.length) throw precondition(`block device ${device} is held by ${holders.join(', ')} on the host`);
  if (!readonly) {
    // O_EXCL on a block device fails with EBUSY while the kernel has it claimed (mounted, swap, dm)
    try {
      const fh = await fsp.open(real, fs.constants.O_RDONLY | fs.constants.O_EXCL);
      await fh.close();
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EBUSY') throw precondition(`block device ${device} is in use on the host (EBUSY)`);
      if (code === 'EACCES' || code === 'EPERM') throw new StorageError('permission_denied', `cannot open ${device}: ${code}`);
      throw err;
    }
  }
  return real;
}

export class BlockDriver implements VolumeDriver<BlockDesc> {
  readonly kind = 'block' as const;

  async validate(desc: BlockDesc): Promise<void> {
    await checkHostBlockDevice(desc.block.device, desc.readOnly);
  }

  identity(desc: BlockDesc): string {
    let real = desc.block.device;
    try {
      real = fs.realpathSync(desc.block.device);
    } catch { /* validate reports it */ }
    return `block:${real}`;
  }

  async attach(target: PodVolumeTarget, desc: BlockDesc, opts: AttachOptions): Promise<AttachHandle> {
    const filename = await checkHostBlockDevice(desc.block.device, opts.readonly);
    const h: AttachHandle = { kind: 'block', guestPath: opts.guestPath, readonly: opts.readonly, mounted: false };
    await withRollback(target, h, async () => {
      const addr = await attachSource(target, h, { kind: 'host_device', path: filename }, opts, { open: `opening ${filename}`, plug: `plugging ${desc.block.device}` });
      const m = await guestMountDisk(target, addr, desc, opts).catch((e) => { throw wrap(`mounting ${desc.block.device} in the guest`, e); });
      h.guestPath = m.guestPath;
      h.mounted = m.mounted;
      if (opts.raw) {
        h.raw = true;
        h.guestDevice = m.guestDevice;
      }
    });
    return h;
  }

  async detach(target: PodVolumeTarget, handle: AttachHandle): Promise<void> {
    await teardown(target, handle);
  }
}
