// The neutral words for a block device handed to a VM: storage/ describes what to attach (a
// file, a host block device, a Ceph RBD image with its key), a hypervisor driver (src/vm/)
// attaches it the way it can. Neither names the other's commands: storage never speaks QMP,
// the VM layer never reads a volume descriptor. On the ground floor because both sides, which
// sit on the same layer, need these types and must not import each other.
import { ErrorCode, PodvisorError } from './errors';

export type BlockSource =
  /** a regular file (an image's erofs, a disk image) */
  | { kind: 'file'; path: string }
  /** a host block device, opened with O_DIRECT */
  | { kind: 'host_device'; path: string }
  /** a Ceph RBD image; the key never reaches a command line (the driver keeps it in a secret) */
  | {
    kind: 'rbd';
    pool: string;
    namespace?: string;
    image: string;
    user: string;
    monitors: Array<{ host: string; port: number }>;
    /** the cephx key, base64 */
    key: string;
    /** a ceph.conf for the client library (options only, no keys) */
    confFile?: string;
  };

/** Where an attached block device sits on the VM's disk bus (what the guest agent looks up). */
export interface BlockAddress {
  scsiId: number;
  lun: number;
}

/**
 * An attached block source: its address, and the names of what the VM made for it (opaque to
 * the caller, which records them so an operator or a test can find them in the VM).
 */
export interface BlockAttachment extends BlockAddress {
  objects: { device: string; nodes: string[]; secret?: string };
}

/**
 * A failed attach: `stage` says whether the VM could not open the source ('open': unreachable,
 * refused, missing) or not plug it in ('plug'); `inUse` that another VM holds it (its lock).
 */
export class BlockAttachError extends PodvisorError {
  constructor(code: ErrorCode, readonly stage: 'open' | 'plug', readonly inUse: boolean, message: string) {
    super(code, message);
    this.name = 'BlockAttachError';
  }
}
