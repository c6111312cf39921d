// Raw host block devices: QEMU opens the device itself (host_device, O_DIRECT, native or
// io_uring AIO) under a raw format node, plugged as scsi-hd; the guest mounts it. The host
// never mounts it, and we refuse devices the host is using (mounted, held by dm/md).
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import type { VolumeDescriptor } from '../descriptor';
import { invalid, notFound, precondition, StorageError } from '../errors';
import type { AttachHandle, AttachOptions, PodVolumeTarget, VolumeDriver } from '../volume-driver';
import { guestMountDisk, plugScsi, qmpNames, teardown, withRollback, wrap } from './scsi';

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

let aioMode: 'io_uring' | 'native' | undefined;

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
    const n = qmpNames(opts.tag);
    const h: AttachHandle = { kind: 'block', guestPath: opts.guestPath, readonly: opts.readonly, nodes: [], mounted: false };
    await withRollback(target, h, async () => {
      await this.addFileNode(target, n.file, filename, opts.readonly);
      h.nodes!.push(n.file);
      await target.qmp('blockdev-add', { driver: 'raw', 'node-name': n.format, file: n.file, 'read-only': opts.readonly });
      h.nodes!.push(n.format);
      const addr = await plugScsi(target, n.format, n.device).catch((e) => {
        // QEMU's image locking: another VM (pod) has the device open for writing, or any access
        // while we want to write
        if (/Failed to get .*lock/.test(String((e as Error)?.message))) throw wrap(`plugging ${desc.block.device} (in use by another pod VM?)`, e, 'failed_precondition');
        throw wrap(`plugging ${desc.block.device}`, e, 'internal');
      });
      h.device = n.device;
      h.scsiId = addr.scsiId;
      h.lun = addr.lun;
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

  private async addFileNode(target: PodVolumeTarget, node: string, filename: string, readonly: boolean): Promise<void> {
    const args = (aio: string) => ({
      driver: 'host_device', 'node-name': node, filename, 'read-only': readonly,
      cache: { direct: true, 'no-flush': false }, aio,
    });
    if (aioMode !== 'native') {
      try {
        await target.qmp('blockdev-add', args('io_uring'));
        aioMode = 'io_uring';
        return;
      } catch (err) {
        // QEMU built without io_uring (or the kernel refuses it): fall back to native AIO
        if (!/io_uring|aio/i.test(String((err as Error).message))) throw wrap(`opening ${filename}`, err, 'failed_precondition');
        aioMode = 'native';
      }
    }
    await target.qmp('blockdev-add', args('native')).catch((e) => { throw wrap(`opening ${filename}`, e, 'failed_precondition'); });
  }

  async detach(target: PodVolumeTarget, handle: AttachHandle): Promise<void> {
    await teardown(target, handle);
  }
}
