// Steps shared by the block-backed drivers (raw block, RBD): attach a block source to the pod,
// mount it in the guest, and the reverse. Every step tolerates "already gone" so detach and
// rollback can be re-run after a crash. The pod (its VM) does the attaching; what is said
// here is only which source, read-only or not, and where the guest mounts it.
import type { BlockAttachError, BlockSource } from '../../src/util/block-source';
import { type ErrorCode, hasCode } from '../../src/util/errors';
import { StorageError } from '../errors';
import type { AttachHandle, AttachOptions, GuestDiskMount, PodVolumeTarget } from '../volume-driver';

export const MOUNT_TIMEOUT_MS = 60_000; // a first mkfs under TCG can take a while

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

/** The tag of a handle: its own, or, in an older daemon's record, the one in its device name (pvvol-<tag>-d). */
export function handleTag(h: Partial<AttachHandle>): string | undefined {
  return h.tag ?? /^pvvol-(.+)-d$/.exec(h.device ?? '')?.[1];
}

/**
 * Attaches `source` as the block device of handle `h`, saying in errors what `where` is:
 * `opening` when the pod could not open it, `plugging` when it could not plug it in.
 */
export async function attachSource(target: PodVolumeTarget, h: Partial<AttachHandle>, source: BlockSource, opts: AttachOptions, where: { open: string; plug: string }): Promise<{ scsiId: number; lun: number }> {
  try {
    const a = await target.attachBlock(opts.tag, source, { readonly: opts.readonly });
    h.tag = opts.tag;
    h.device = a.objects.device;
    h.nodes = a.objects.nodes;
    if (a.objects.secret) h.secret = a.objects.secret;
    h.scsiId = a.scsiId;
    h.lun = a.lun;
    return { scsiId: a.scsiId, lun: a.lun };
  } catch (err) {
    const e = err as Partial<BlockAttachError>;
    if (e.stage === 'open') throw wrap(where.open, err);
    throw wrap(e.inUse ? `${where.plug} (in use by another pod VM?)` : where.plug, err);
  }
}

/** Mounts the disk at `addr` at opts.guestPath in the guest (or, raw, just finds its node). */
export async function guestMountDisk(
  target: PodVolumeTarget, addr: { scsiId: number; lun: number }, desc: { fsType: string; mountOptions: string[]; format: boolean }, opts: AttachOptions,
): Promise<{ guestPath: string; mounted: boolean; guestDevice?: { major: number; minor: number } }> {
  if (opts.raw) {
    // raw passthrough: the container gets the device node itself (agent `disk.device`)
    const r = await target.diskDevice(addr, 15_000);
    if (typeof r?.device !== 'string' || !Number.isInteger(r?.major) || !Number.isInteger(r?.minor)) {
      throw new StorageError('internal', 'agent disk.device answered without a device');
    }
    return { guestPath: r.device, mounted: false, guestDevice: { major: r.major, minor: r.minor } };
  }
  const params: GuestDiskMount = {
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
  await target.mountDisk(params, opts.timeoutMs ?? MOUNT_TIMEOUT_MS);
  return { guestPath: opts.guestPath, mounted: true };
}

export async function guestUnmount(target: PodVolumeTarget, guestPath: string): Promise<void> {
  try {
    await target.unmount(guestPath, 30_000);
  } catch (err) {
    if (hasCode(err, 'not_found')) return;
    throw err;
  }
}

/** Undoes a (possibly partial) block attachment in reverse order. */
export async function teardown(target: PodVolumeTarget, h: Partial<AttachHandle>): Promise<void> {
  if (!target.alive()) {
    const tag = handleTag(h);
    if (tag) await target.detachBlock(tag, h.scsiId); // only frees its slot
    return;
  }
  if (h.mounted && h.guestPath) await guestUnmount(target, h.guestPath);
  const tag = handleTag(h);
  if (tag) await target.detachBlock(tag, h.scsiId);
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
