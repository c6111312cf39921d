// QMP + agent steps shared by the block-backed drivers (raw block, RBD): plug a block node as a
// scsi-hd on scsi0.0, mount it in the guest, and the reverse. Every step tolerates "already gone"
// so detach and rollback can be re-run after a crash.
import type { AttachHandle, AttachOptions, PodVolumeTarget } from '../volume-driver';
import { StorageError } from '../errors';
import { type ErrorCode, hasCode } from '../../src/util/errors';

export const DEVICE_DELETE_TIMEOUT_MS = 10_000;
export const MOUNT_TIMEOUT_MS = 60_000; // a first mkfs under TCG can take a while

/** QMP names for one attachment; all start with "pvvol" so leftovers can be found and swept. */
export function qmpNames(tag: string) {
  return { file: `pvvol-${tag}-f`, format: `pvvol-${tag}`, secret: `pvvol-${tag}-s`, device: `pvvol-${tag}-d` };
}

function isGone(err: unknown): boolean {
  const m = String((err as Error)?.message ?? err);
  return /not found|No such|DeviceNotFound|Cannot find|does not exist|not exist/i.test(m) || (err as { errorClass?: string })?.errorClass === 'DeviceNotFound';
}

export async function blockdevDel(target: PodVolumeTarget, node: string): Promise<void> {
  try {
    await target.qmp('blockdev-del', { 'node-name': node });
  } catch (err) {
    if (!isGone(err)) throw err;
  }
}

export async function objectDel(target: PodVolumeTarget, id: string): Promise<void> {
  try {
    await target.qmp('object-del', { id });
  } catch (err) {
    if (!isGone(err)) throw err;
  }
}

export async function deviceDel(target: PodVolumeTarget, id: string): Promise<void> {
  const gone = target.qmpEvent('DEVICE_DELETED', DEVICE_DELETE_TIMEOUT_MS, (d) => d?.device === id);
  gone.catch(() => undefined);
  try {
    await target.qmp('device_del', { id });
  } catch (err) {
    if (isGone(err)) return;
    throw err;
  }
  await gone;
}

/** Plugs node `drive` as scsi-hd `device`; returns the SCSI address. Frees the id on failure. */
export async function plugScsi(target: PodVolumeTarget, drive: string, device: string): Promise<{ scsiId: number; lun: number }> {
  const scsiId = target.allocScsiId();
  try {
    await target.qmp('device_add', { driver: 'scsi-hd', id: device, bus: 'scsi0.0', 'scsi-id': scsiId, lun: 0, drive });
  } catch (err) {
    target.releaseScsiId(scsiId);
    throw err;
  }
  return { scsiId, lun: 0 };
}

/**
 * A failure of one step, as a StorageError: ours keep their code; a failed agent or VM request
 * keeps the code it carries (the agent client maps the guest's codes once, src/agent/errors.ts)
 * unless `code` says better; anything else is INTERNAL.
 */
export function wrap(what: string, err: unknown, code?: ErrorCode): StorageError {
  if (err instanceof StorageError) return err;
  const msg = (err as Error)?.message ?? String(err);
  return new StorageError(code ?? (hasCode(err) ? err.code : 'internal'), `${what}: ${msg}`);
}

/** Mounts SCSI disk (scsiId, lun) at opts.guestPath in the guest (or, raw, just finds its node). */
export async function guestMountDisk(
  target: PodVolumeTarget, addr: { scsiId: number; lun: number }, desc: { fsType: string; mountOptions: string[]; format: boolean }, opts: AttachOptions,
): Promise<{ guestPath: string; mounted: boolean; guestDevice?: { major: number; minor: number } }> {
  if (opts.raw) {
    // raw passthrough: the container gets the device node itself (agent `disk.device`)
    const r = await target.agentCall('disk.device', { scsi_id: addr.scsiId, lun: addr.lun }, 15_000);
    if (typeof r?.device !== 'string' || !Number.isInteger(r?.major) || !Number.isInteger(r?.minor)) {
      throw new StorageError('internal', 'agent disk.device answered without a device');
    }
    return { guestPath: r.device, mounted: false, guestDevice: { major: r.major, minor: r.minor } };
  }
  const params: Record<string, unknown> = {
    scsi_id: addr.scsiId,
    lun: addr.lun,
    fstype: desc.fsType,
    readonly: opts.readonly,
    target: opts.guestPath,
    options: opts.readonly ? [...desc.mountOptions.filter((o) => o !== 'rw'), 'ro'] : desc.mountOptions,
  };
  if (desc.format && !opts.readonly) params.format = desc.fsType;
  // a volume expanded while detached (CSI ControllerExpandVolume grows the RBD image) gets its
  // filesystem grown to the device's size here, on its next attach (NodeExpandVolume's job)
  if (!opts.readonly) params.grow = true;
  await target.agentCall('disk.mount', params, MOUNT_TIMEOUT_MS);
  return { guestPath: opts.guestPath, mounted: true };
}

export async function guestUnmount(target: PodVolumeTarget, guestPath: string): Promise<void> {
  try {
    await target.agentCall('disk.unmount', { target: guestPath }, 30_000);
  } catch (err) {
    if (hasCode(err, 'not_found')) return;
    throw err;
  }
}

/** Undoes a (possibly partial) block attachment in reverse order. */
export async function teardown(target: PodVolumeTarget, h: Partial<AttachHandle>): Promise<void> {
  if (!target.alive()) {
    if (h.scsiId !== undefined) target.releaseScsiId(h.scsiId);
    return;
  }
  if (h.mounted && h.guestPath) await guestUnmount(target, h.guestPath);
  if (h.device) await deviceDel(target, h.device);
  if (h.scsiId !== undefined) target.releaseScsiId(h.scsiId);
  for (const n of [...(h.nodes ?? [])].reverse()) await blockdevDel(target, n);
  if (h.secret) await objectDel(target, h.secret);
}

/** Runs `steps` building up `h`; on failure tears down what exists and rethrows. */
export async function withRollback(target: PodVolumeTarget, h: Partial<AttachHandle>, steps: () => Promise<void>): Promise<void> {
  try {
    await steps();
  } catch (err) {
    await teardown(target, h).catch(() => undefined);
    throw err;
  }
}
