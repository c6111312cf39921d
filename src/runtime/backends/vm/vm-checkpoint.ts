// What the VM backend saves of a pod for a checkpoint and needs back to restore it: the VM's
// state file (QEMU's migration stream: all RAM, so every container's processes, memory and
// writable layer, which live in guest memory, and the device state), the VM's size and
// devices (a restored VM must have the same vCPUs, RAM, NICs and image disks at the same
// addresses before the state loads), and the host inputs the state depends on (hypervisor
// binary and device layout, accelerator, the guest kernel and initramfs by content). The
// trade-off: a restore is a new VM of the same shape, not a boot, so it needs the same QEMU and
// guest build; anything else is refused before a VM starts.
import crypto from 'node:crypto';
import fs from 'node:fs';
import type { Config } from '../../../config/config';
import { failedPrecondition } from '../../../util/errors';
import type { DiskAttachment } from '../../../vm/hypervisor';
import type { PodSize } from '../../resize';

/** The VM state file in a checkpoint directory. */
export const VM_STATE_FILE = 'vm.state';

/** Longest a pod VM's state may take to be written (all of its RAM, under load). */
export const CHECKPOINT_TIMEOUT_MS = 300_000;

export interface VmCheckpointState {
  vcpus: number;
  memoryMiB: number;
  /** the size it ran at (vCPUs online, RAM outside the balloon) */
  size: PodSize;
  nics: number;
  /** its RAM was a memory backend object (a clone's): the restored VM's must be too */
  ramBackend: boolean;
  disks: Array<Pick<DiskAttachment, 'nodeName' | 'scsiId' | 'lun' | 'readonly'>>;
}

const MAX_DISKS = 255;

/** A checkpoint's VM state, checked (it comes from a file anyone may have written). */
export function vmState(raw: Record<string, unknown>): VmCheckpointState {
  const bad = (what: string) => failedPrecondition(`checkpoint: VM state ${what}`);
  const int = (v: unknown, min: number, max: number, what: string): number => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw bad(`${what} ${JSON.stringify(v)} is out of range`);
    return v;
  };
  const size = (raw.size ?? {}) as Record<string, unknown>;
  const vcpus = int(raw.vcpus, 1, 1024, 'vcpus');
  const memoryMiB = int(raw.memoryMiB, 16, 16 * 1024 * 1024, 'memoryMiB');
  const disks = raw.disks;
  if (!Array.isArray(disks) || disks.length > MAX_DISKS) throw bad('disks are not a list');
  return {
    vcpus,
    memoryMiB,
    size: { vcpus: int(size.vcpus, 1, vcpus, 'size.vcpus'), memoryMiB: int(size.memoryMiB, 1, memoryMiB, 'size.memoryMiB') },
    nics: int(raw.nics, 0, 16, 'nics'),
    ramBackend: raw.ramBackend === true,
    disks: disks.map((d: Record<string, unknown>, i) => {
      const nodeName = d?.nodeName;
      if (typeof nodeName !== 'string' || !/^disk\d{1,3}$/.test(nodeName)) throw bad(`disk ${i} has a bad node name`);
      return { nodeName, scsiId: int(d.scsiId, 0, 255, 'disk scsiId'), lun: int(d.lun, 0, 255, 'disk lun'), readonly: d.readonly === true };
    }),
  };
}

const digests = new Map<string, string>();

/** sha256 of a file, remembered while its size and mtime stay (the guest kernel and initramfs). */
function fileSha256(file: string): string {
  const st = fs.statSync(file);
  const key = `${file}:${st.size}:${st.mtimeMs}`;
  let d = digests.get(key);
  if (!d) {
    d = crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
    digests.set(key, d);
  }
  return d;
}

/** What a restoring host must have the same of. */
export function vmCheckpointHost(cfg: Config, hypervisorInputs: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(hypervisorInputs)) out[`hypervisor.${k}`] = v;
  out['guest.kernel'] = fileSha256(cfg.vm.kernel);
  out['guest.initramfs'] = fileSha256(cfg.vm.initramfs);
  return out;
}
