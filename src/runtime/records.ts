// What podvisor persists about pods and containers (one JSON file each, see store/).
import type { ContainerConfig, ImageSpec, PodSandboxConfig } from '../../cri-api/messages';
import type { PodNetwork } from '../../network/network-driver';
import type { VmInfo } from '../vm/hypervisor';

export type SandboxState = 'SANDBOX_READY' | 'SANDBOX_NOTREADY';
export type ContainerState = 'CONTAINER_CREATED' | 'CONTAINER_RUNNING' | 'CONTAINER_EXITED' | 'CONTAINER_UNKNOWN';

/** Where an image is mounted in a pod; part of the sandbox record (the pod's state). */
export interface ImageMount {
  /** the backend's handle to undo it (VM: the disk's node name) */
  nodeName: string;
  /** the path containers' rootfs and image volumes name */
  target: string;
}

export interface SandboxRecord {
  /**
   * Written before RunPodSandbox's first side effect (netns, CNI ADD, cgroup, VM) and cleared
   * once the pod is ready: a record still pending when the daemon starts is a start that a crash
   * interrupted, and everything it may have made is undone.
   */
  pending?: boolean;
  id: string;
  /** the PodSandboxConfig exactly as given */
  config: PodSandboxConfig;
  runtimeHandler: string;
  /** the pod backend's kind (runtime/pod-backend.ts); absent in records from before backends: "vm" */
  backend?: string;
  /** unix ns, decimal */
  createdAt: string;
  state: SandboxState;
  vm: VmInfo | null;
  /** image id → where it is mounted in this pod's guest */
  images: Record<string, ImageMount>;
  agentVersion: string;
  /** the pod's CNI network while it is set up */
  network: PodNetwork | null;
  /** host cgroup directories made for the pod VM under cgroup_parent (pod-cgroup.ts) */
  cgroups?: string[];
  /** a host pod's (backends/host/): its directory and pinned namespaces */
  host?: HostPodState;
  /** the size the pod runs at (runtime/resize.ts); absent: the VM's boot size (rec.vm) */
  size?: { vcpus: number; memoryMiB: number };
  /** a pod restored from a checkpoint: host container id → the id its pod knows the container by */
  guestIds?: Record<string, string>;
  /** the checkpoint it was restored from (PodSandboxStatus verbose info) */
  restoredFrom?: string;
}

/** What a host pod holds on the host (backends/host/pinned-ns.ts makes it). */
export interface HostPodState {
  /** the pod's directory: pinned namespace files, resolv.conf, hostname */
  dir: string;
  /** namespace files pinned for the pod; absent where it uses the host's */
  ns: { net?: string; ipc?: string; uts?: string; shm?: string; init?: { pid: number; startTime: number } };
}

export interface ContainerRecord {
  /**
   * Written before CreateContainer's first side effect in the pod (image mount, volume
   * attachments, share binds, the container in the guest) and cleared with the final save: a
   * record still pending at start is a create that a crash interrupted, and it is removed.
   */
  pending?: boolean;
  id: string;
  sandboxId: string;
  /** the ContainerConfig exactly as given (labels/annotations echoed verbatim) */
  config: ContainerConfig;
  imageId: string;
  /** what the container was asked to run, for ContainerStatus.image */
  imageSpec: ImageSpec;
  imageRef: string;
  createdAt: string;
  startedAt: string;
  finishedAt: string;
  state: ContainerState;
  exitCode: number;
  reason: string;
  message: string;
  /** absolute log file path, '' when kubelet asked for none */
  logPath: string;
  pid: number;
  stopSignal: number;
  /** agent stream ids of the container's stdio, re-adopted after a daemon restart */
  streams: { stdin: number; stdout: number; stderr: number };
  /** share-relative directory holding this container's binds */
  shareDir: string;
  /** keys of the volumes (storage/) this container holds attached */
  volumes: string[];
  /** image volumes (CRI Mount.image): container path → image id, held while the container exists */
  imageVolumes?: Array<{ containerPath: string; imageId: string }>;
  /** guest device cgroup rules of its raw block devices (kept across UpdateContainerResources) */
  deviceRules?: DeviceRule[];
  /** the identity its process runs with, as the pod resolved it (CRI ContainerStatus.user) */
  user?: { uid: number; gid: number; supplementalGroups: number[] };
}

/**
 * OCI linux.resources.devices entry allowing one device (a guest block device, or a host pod's
 * block or character device), or (no type, no numbers)
 * every device: a privileged container's.
 */
export interface DeviceRule {
  allow: true;
  type?: 'b' | 'c';
  major?: number;
  minor?: number;
  /** subset of "rwm" */
  access: string;
}

export function labelsMatch(labels: Record<string, string> | undefined, selector: Record<string, string> | undefined): boolean {
  if (!selector) return true;
  for (const [k, v] of Object.entries(selector)) if ((labels ?? {})[k] !== v) return false;
  return true;
}
