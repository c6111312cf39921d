// The seam between the volume manager and each kind of storage. A driver turns a validated
// descriptor into something attached to ONE pod (a block source the pod's VM attaches, plus a
// guest mount) and undoes it. Drivers describe block sources (src/util/block-source.ts) and ask
// the pod's guest to mount; they never name a hypervisor command and never mount anything on
// the host.
import type { BlockAddress, BlockAttachment, BlockSource } from '../src/util/block-source';
import type { VolumeDescriptor, VolumeKind } from './descriptor';

/** `disk.mount` of the guest API (guest/PROTOCOL.md). */
export interface GuestDiskMount {
  scsi_id: number;
  lun: number;
  fstype: string;
  readonly: boolean;
  target: string;
  options: string[];
  format?: string | null;
  grow?: boolean;
}

/** `nfs.mount` of the guest API. */
export interface GuestNfsMount {
  server: string;
  export: string;
  version: string;
  options: string[];
  readonly: boolean;
  target: string;
}

/**
 * What the volume manager needs from a running pod (the VM backend's pod implements it).
 * Calls must go through the pod's own serialized clients (one command at a time).
 */
export interface PodVolumeTarget {
  /** sandbox id (used in logs and state file names only) */
  readonly id: string;
  /** false once the pod has stopped: detach then only forgets state */
  alive(): boolean;
  /** attaches a block source under `tag` (unique per pod); rejects with BlockAttachError, having removed what it made */
  attachBlock(tag: string, source: BlockSource, o: { readonly: boolean }): Promise<BlockAttachment>;
  /** undoes attachBlock (frees `scsiId`); tolerates what is already gone */
  detachBlock(tag: string, scsiId?: number): Promise<void>;
  /** removes volume attachments nothing accounts for (after a crash) */
  sweepBlocks(): Promise<void>;
  /** the guest mounts the disk at `address`; rejects with the agent's error */
  mountDisk(p: GuestDiskMount, timeoutMs: number): Promise<void>;
  /** the guest's device node of the disk (raw block volumes) */
  diskDevice(a: BlockAddress, timeoutMs: number): Promise<{ device: string; major: number; minor: number }>;
  mountNfs(p: GuestNfsMount, timeoutMs: number): Promise<void>;
  /** the guest unmounts `target`; not_found when nothing is mounted there */
  unmount(target: string, timeoutMs: number): Promise<void>;
}

/** Everything needed to undo an attachment; persisted as JSON (no secrets in it). */
export interface AttachHandle {
  kind: VolumeKind;
  /** guest mount point (or device node for raw passthrough) */
  guestPath: string;
  readonly: boolean;
  /** the tag the block source was attached under (Vm.attachBlock); absent: no block device */
  tag?: string;
  /**
   * what the VM made for the block device, by the names the VM gave them (opaque here; recorded
   * so they can be found in the VM; records of older daemons have them without a tag)
   */
  device?: string;
  nodes?: string[];
  secret?: string;
  scsiId?: number;
  lun?: number;
  /** true when the guest mounted something at guestPath */
  mounted: boolean;
  /** raw passthrough: guestPath is the guest's device node, with these numbers */
  raw?: boolean;
  guestDevice?: { major: number; minor: number };
}

export interface AttachOptions {
  /** attach read-only (ro device + ro mount) */
  readonly: boolean;
  /** guest mount point the driver must use */
  guestPath: string;
  /** short id naming the attachment in the pod; unique per pod */
  tag: string;
  /** raw passthrough: attach the device, do not mount; guestPath is then the device node */
  raw?: boolean;
  /**
   * how long the caller still waits (the CRI call's deadline: kubelet's runtimeRequestTimeout):
   * the bound of the guest's mount; the driver's own bound when absent. A shorter host bound
   * than the caller's abandons guest mounts that then race the caller's retry.
   */
  timeoutMs?: number;
}

export interface VolumeDriver<D extends VolumeDescriptor = VolumeDescriptor> {
  readonly kind: VolumeKind;
  /** extra checks beyond the descriptor syntax (files exist, key readable, …); throws StorageError */
  validate(desc: D): Promise<void>;
  /** a stable identity of the storage (same volume ⇔ same identity), used to share attachments */
  identity(desc: D): string;
  /** attaches and mounts; on failure everything created so far is removed before throwing */
  attach(target: PodVolumeTarget, desc: D, opts: AttachOptions): Promise<AttachHandle>;
  /** unmounts and detaches; tolerates objects that are already gone */
  detach(target: PodVolumeTarget, handle: AttachHandle): Promise<void>;
}
