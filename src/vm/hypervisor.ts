// The seam between the runtime and whatever runs pod VMs. One implementation today (qemu.ts);
// the runtime only ever talks to these interfaces. Everything on them is hypervisor-neutral:
// disks are described as block sources (util/block-source.ts), never as machine commands, so a
// second driver (Cloud Hypervisor, Firecracker) implements the same calls its own way.
import type { AgentCallObserver, AgentClient } from '../agent/client';
import type { BlockAttachment, BlockSource } from '../util/block-source';

export type Accelerator = 'kvm' | 'tcg';

export interface VmNetwork {
  /** path of the pod's network namespace (e.g. /run/netns/<name>) holding the taps; QEMU runs in the host's */
  netnsPath: string;
  /** one virtio-net device per tap (inside the netns), with the MAC of its CNI interface */
  nics: Array<{ tap: string; mac: string }>;
}

export interface VmSpec {
  /** sandbox id: names the VM and its files */
  id: string;
  /** runtime directory of this VM (sockets, pid file, console log); created by the caller */
  dir: string;
  vcpus: number;
  memoryMiB: number;
  /** host directory exported to the guest over virtio-9p */
  sharePath: string;
  network?: VmNetwork;
}

export interface DiskAttachment {
  nodeName: string;
  scsiId: number;
  lun: number;
  path: string;
  readonly: boolean;
}

export interface VmInfo {
  id: string;
  pid: number;
  accelerator: Accelerator;
  /** how the VM came to be: booted from the kernel, cloned from a template, or restored from a checkpoint */
  bootMode: 'cold' | 'clone' | 'restore';
  /** its RAM is a memory backend object named "mem" (clones, and VMs restored from one): a checkpoint's state names it */
  ramBackend?: boolean;
  /** a clone started ahead of its pod (a warm spare) and handed to it */
  spare?: boolean;
  dir: string;
  agentSocket: string;
  qmpSocket: string;
  vcpus: number;
  memoryMiB: number;
  disks: DiskAttachment[];
}

/**
 * Mode of a VM's share directory (the root of the guest's 9p mount). Searchable by everyone:
 * a container in a user namespace mounts its binds out of the share as a mapped uid, which must
 * reach them; nobody may list it, and on the host the VM directory around it stays root's.
 */
export const SHARE_DIR_MODE = 0o711;

/** A file in a VM's runtime directory naming the VM when it differs from the directory (a warm spare taken by a pod). */
export const VM_NAME_FILE = 'vm-name';

/**
 * How a VM comes to life. A template keeps its RAM in a shared file (on tmpfs); a clone maps
 * that file privately (copy-on-write: the template file is never written) and restores the
 * device state the template saved with Vm.snapshot.
 */
export type Boot =
  | { mode: 'cold' }
  | { mode: 'template'; memPath: string }
  | { mode: 'clone'; memPath: string; statePath: string }
  /**
   * A pod VM checkpointed with Vm.checkpoint (its RAM and device state in `statePath`), with the
   * disks it had then plugged back at the same addresses before the state loads.
   */
  | { mode: 'restore'; statePath: string; disks: DiskAttachment[]; ramBackend: boolean };

export interface Vm {
  readonly info: VmInfo;
  /** the tag under which the guest mounts the VM's share (sandbox.setup's share_tag) */
  readonly shareTag: string;
  /** true until the VM process has exited */
  alive(): boolean;
  /**
   * A connection to the VM's guest agent (guest/PROTOCOL.md). For a clone the driver opened it
   * before the restored VM resumed, and the first call hands that one over: the guest must never
   * learn of a host change that did not happen (see qemu.ts, restoreClone). Later calls (a
   * daemon restart) connect afresh.
   */
  connectAgent(timeoutMs: number, observe?: AgentCallObserver): Promise<AgentClient>;
  /** resolves once the VM process has exited */
  readonly exited: Promise<void>;
  /** attaches a file (an image's erofs) as a disk; the guest finds it at the returned address */
  attachDisk(path: string, readonly: boolean): Promise<DiskAttachment>;
  detachDisk(nodeName: string): Promise<void>;
  /**
   * Attaches a volume's block source under `tag` (unique per VM, [A-Za-z0-9-]); rejects with
   * BlockAttachError (util/block-source.ts), having removed what it made.
   */
  attachBlock(tag: string, source: BlockSource, o: { readonly: boolean }): Promise<BlockAttachment>;
  /** Detaches what attachBlock made under `tag` (and frees `scsiId`); tolerates what is already gone. */
  detachBlock(tag: string, scsiId?: number): Promise<void>;
  /** Removes volume attachments no caller accounts for any more (what a crash left behind). */
  sweepBlocks(): Promise<void>;
  /** marks disk slots held by attachments made before a daemon restart */
  reserveScsiIds(ids: number[]): void;
  /** host path `src` (and the mounts under it) at `dst` in the VM process's own mount namespace; `readonly` for the top mount */
  bindIntoMountNs(src: string, dst: string, readonly: boolean): Promise<void>;
  /**
   * Pauses a template VM (started with boot mode 'template') and saves its device state to
   * `statePath`; its RAM stays in the template's memory file. Clones restore from the pair.
   */
  snapshot(statePath: string): Promise<void>;
  /**
   * What keeps this VM from being checkpointed now (e.g. a mounted host share), as the
   * hypervisor words it; empty when nothing does.
   */
  checkpointBlockers(): Promise<string[]>;
  /**
   * Pauses the VM and writes its whole state (RAM and devices) to `statePath`; resumes it after
   * when `resume`, else leaves it paused (the caller stops it). Hypervisor.start with a
   * 'restore' boot brings such a state back in a new VM of the same size and devices.
   */
  checkpoint(statePath: string, o: { resume: boolean; timeoutMs: number }): Promise<void>;
  /**
   * RAM the guest may use, MiB, at most the boot size: a balloon holds the rest. Resolves once
   * the guest has given up or got back the difference; when it cannot within `timeoutMs` (the
   * RAM is in use) the previous amount is asked back and this rejects.
   */
  setMemory(mib: number, timeoutMs: number): Promise<void>;
  /** asks the VM to power off, then kills it after `graceMs`; resolves when the process is gone */
  stop(graceMs: number): Promise<void>;
}

export interface Hypervisor {
  readonly accelerator: Accelerator;
  /** Checks that binaries and guest files exist; returns a reason string when not ready. */
  readiness(): Promise<string | undefined>;
  /**
   * Starts a VM (cold unless `boot` says otherwise); a clone is restored and running when this
   * resolves, its agent connection already open (Vm.connectAgent hands it over).
   */
  start(spec: VmSpec, boot?: Boot): Promise<Vm>;
  /**
   * Everything a VM template depends on besides the guest build and its size (the binary, the
   * device layout, the accelerator …): a template made under other inputs is never cloned.
   */
  templateKeyInputs(): Record<string, string>;
  /** what a checkpoint's VM state depends on (binary, device layout, accelerator): a checkpoint made under others is refused */
  checkpointKeyInputs(): Record<string, string>;
  /** true while a VM of this driver maps `memPath` (a template's memory file) */
  memoryFileInUse(memPath: string): boolean;
  /** Files of a VM directory that belong to the running VM, not to a saved template (removed before publishing one). */
  readonly runtimeFiles: readonly string[];
  /** Re-attaches to a VM that outlived a daemon restart; undefined when it is gone. */
  reconnect(info: VmInfo): Promise<Vm | undefined>;
  /**
   * Kills the VM that ran in runtime directory `dir` if it still runs (its record is gone);
   * returns its pid when it killed one. Guards against pid reuse: only a VM of this driver that
   * carries the directory's name (or VM_NAME_FILE's) is killed.
   */
  reapStray(dir: string): Promise<number | undefined>;
}
