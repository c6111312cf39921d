// The seam between the volume manager and each kind of storage. A driver turns a validated
// descriptor into something attached to ONE pod VM (QMP objects + a guest mount) and undoes it.
// Drivers never mount anything on the host.
import type { VolumeDescriptor, VolumeKind } from './descriptor';

/**
 * What the volume manager needs from a running pod VM. The runtime's PodVm implements it.
 * QMP and agent calls must be the VM's own serialized clients (one command at a time).
 */
export interface PodVolumeTarget {
  /** sandbox id (used in logs and state file names only) */
  readonly id: string;
  /** false once the VM process has exited: detach then only forgets state */
  alive(): boolean;
  /** one QMP command; rejects with the QMP error (message names the command) */
  qmp(command: string, args?: Record<string, unknown>): Promise<any>;
  /**
   * Resolves with the data of the next QMP event `name` whose data matches, or rejects after
   * timeoutMs. Must be subscribed synchronously (before the caller sends the command).
   */
  qmpEvent(name: string, timeoutMs: number, match?: (data: any) => boolean): Promise<any>;
  /** one guest agent request (guest/PROTOCOL.md); rejects with the agent's error */
  agentCall(method: string, params: Record<string, unknown>, timeoutMs?: number): Promise<any>;
  /**
   * A free SCSI target id on bus scsi0.0 (1..255), shared with the image disks so the two
   * never collide; the manager hands it back with releaseScsiId after unplugging.
   */
  allocScsiId(): number;
  releaseScsiId(id: number): void;
}

/** Everything needed to undo an attachment; persisted as JSON (no secrets in it). */
export interface AttachHandle {
  kind: VolumeKind;
  /** guest mount point (or device node for raw passthrough) */
  guestPath: string;
  readonly: boolean;
  /** QMP objects in creation order; detach removes them in reverse */
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
  /** short id used to name QMP nodes/devices/secrets; unique per pod VM */
  tag: string;
  /** raw passthrough: attach the device, do not mount; guestPath is then the device node */
  raw?: boolean;
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
