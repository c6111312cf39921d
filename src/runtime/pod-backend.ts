// The seam for "what a pod is". SandboxManager, ContainerManager, stats, metrics and the
// streaming backend see a Pod and the PodBackend that made it, never a VM, QMP or an agent
// connection. Each pod's backend is chosen from its runtime handler ([runtime] handlers in the
// config: handler name → backend kind). Two kinds are meant to sit behind it:
//   - "vm" (backends/vm/): the pod is a VM; its containers run in the guest through the agent;
//   - "host" (backends/host/): the pod is a set of pinned host namespaces; its containers run
//     on the host, each held by a shim (podvisor-launch shim, youki's libcontainer).
// The container operations take the guest API's shapes (agent/api.ts) because those already
// say everything a container runtime needs (OCI spec, stdio stream ids, signals); the VM backend
// hands them to its agent, a host backend to its shim. What only one kind can do is optional
// (volumes as disks: `volumes`; stdio and logs held by the pod itself: `containerIo`; a direct
// view of the host: `hostView`), so callers ask instead of assuming.
import type { PodSandboxConfig } from '../../cri-api/messages';
import type { Duplex, Readable, Writable } from 'node:stream';
import type { GuestParams, GuestResult } from '../agent/api';
import type { PodVolumeTarget } from '../../storage/volume-driver';
import type { ImageMount, SandboxRecord } from './records';
import type { MemoryVolumeSpec } from './memory-volume';
import type { SpecTarget } from './oci-spec';
import type { PodSize } from './resize';

/** A byte stream between the host and a pod's process (stdio, exec, port-forward). */
export interface PodStream extends Duplex {
  /**
   * Names the stream inside its pod: goes into the request that uses it, and into the container
   * record so the stream can be adopted again after a daemon restart.
   */
  readonly id: number;
}

/** An event from inside the pod (guest/PROTOCOL.md "Events": `exit` of a container or exec, `oom`). Untrusted. */
export interface PodEvent {
  type: string;
  [key: string]: unknown;
}

/** Features a backend really implements, reported per runtime handler by RuntimeConfig/Status. */
export interface BackendFeatures {
  recursiveReadOnlyMounts: boolean;
  /** pods with userns_options mode POD (runtime/userns.ts) */
  userNamespaces: boolean;
  /** SupplementalGroupsPolicy Strict honoured and the effective user reported (createContainer's `user`) */
  supplementalGroupsPolicy: boolean;
}

/** A client's side of an attach (the streaming server's ProcessIO has this shape). */
export interface AttachIo {
  stdin?: Readable;
  stdout?: Writable;
  stderr?: Writable;
  tty: boolean;
  resize?: AsyncIterable<{ width: number; height: number }>;
}

/**
 * A pod that holds its containers' stdio and writes their CRI logs itself (a host pod's shims,
 * which go on logging while the daemon is down): the container manager opens no streams for its
 * containers and hands these calls over.
 */
export interface PodContainerIo {
  /** ReopenContainerLog: the log file is opened again (kubelet rotated it) */
  reopenLog(containerId: string): Promise<void>;
  /** connects a client to the container's live stdio; resolves when the client leaves or the container ends */
  attach(containerId: string, io: AttachIo): Promise<void>;
}

/** Where an image is mounted in a pod (kept in the sandbox record). */
export type PodImageMount = ImageMount;

export interface Pod {
  /** the sandbox id */
  readonly id: string;
  /** false once the pod's processes are gone (VM exited, namespaces' holder died) */
  alive(): boolean;
  /** resolves once the pod is gone, whoever ended it */
  readonly exited: Promise<void>;
  /** false once the control channel (agent connection, shim socket) is closed */
  connected(): boolean;
  /** routes the pod's events (container and exec exits) to `handler` */
  onEvent(handler: (ev: PodEvent) => void): void;
  /** what PodSandboxStatus' verbose info says about this pod (backend, pid, …) */
  describe(): Record<string, unknown>;

  // ---- streams: stdio of containers and execs, port-forward connections
  openStream(): PodStream;
  /** the pod end of a stream that outlived a daemon restart (its id from the container record) */
  adoptStream(id: number): PodStream;

  // ---- containers (ids are the CRI container ids)
  /**
   * creates (not starts) a container on an image mounted by mountImage, or rejects with
   * deadline_exceeded after `timeoutMs`; a create the pod completes after that is undone by the
   * pod (nothing of an abandoned create may stay behind: the caller retries with a new id). With
   * `containerIo` the stdio stream ids are 0 and `io` says where the log goes and whether it
   * takes stdin. Says who its process runs as.
   */
  createContainer(p: GuestParams<'container.create'>, timeoutMs: number, io?: { logPath: string; stdin: boolean }): Promise<Pick<GuestResult<'container.create'>, 'user'> | void>;
  /** `timeoutMs`: the caller's deadline (kubelet's runtimeRequestTimeout), default the agent's */
  startContainer(id: string, timeoutMs?: number): Promise<{ pid: number }>;
  signalContainer(id: string, signal: number, all: boolean): Promise<void>;
  /** the container must be stopped; frees what it holds in the pod */
  deleteContainer(id: string): Promise<void>;
  containerState(id: string): Promise<GuestResult<'container.state'>>;
  updateContainer(id: string, resources: object): Promise<void>;
  /**
   * a process in a running container; its exit arrives as an `exit` event with its exec id;
   * `timeoutMs` bounds the start (default: the agent's call timeout)
   */
  exec(p: GuestParams<'exec.start'>, timeoutMs?: number): Promise<void>;
  signalProcess(containerId: string, execId: string | null, signal: number): Promise<void>;
  resizeProcess(containerId: string, execId: string | null, rows: number, cols: number): Promise<void>;
  /** connects `stream` to `port` in the pod's network namespace */
  portForward(port: number, stream: PodStream): Promise<void>;
  /** container figures (ids; empty: the pod's own only), as guest/PROTOCOL.md `stats` */
  stats(ids: string[]): Promise<GuestResult<'stats'>>;
  /** what the pod privately costs the host in memory, bytes (VM: QEMU's private pages) */
  hostPrivateBytes(): Promise<number | undefined>;

  // ---- what containers are made of
  /** mounts an image (its erofs file) read-only in the pod; every container of it shares the mount */
  /** `timeoutMs`: what is left of the caller's deadline (absent: the backend's own bound) */
  mountImage(imageId: string, erofsPath: string, timeoutMs?: number): Promise<PodImageMount>;
  unmountImage(m: PodImageMount): Promise<void>;
  /** makes host path `src` visible to the pod's containers; returns the path to name in the OCI spec */
  bindHostPath(src: string, rel: string, readonly: boolean): Promise<string>;
  /** undoes bindHostPath for everything under `rel` */
  unbindHostPaths(rel: string): Promise<void>;
  /**
   * A memory-backed volume (memory-volume.ts) as a tmpfs of the pod's own memory, made once and
   * shared by the containers that mount it; returns the path to name in the OCI spec. Absent:
   * the backend binds the host's tmpfs like any host path.
   */
  memoryVolume?(v: MemoryVolumeSpec): Promise<string>;
  /** the target storage/ attaches volumes to (disks, NFS in the guest); undefined: no volumes in such pods */
  readonly volumes: PodVolumeTarget | undefined;
  /** set when the pod holds its containers' stdio and logs (see PodContainerIo) */
  readonly containerIo?: PodContainerIo;
  /**
   * Set when the pod's containers see the host directly (a host pod): bindHostPath returns the
   * host path itself and a mount's read-only flag is the container mount's own; a raw block
   * device (a mount's host_path or a CRI device) is given as the host's own device node.
   */
  readonly hostView?: true;
  /**
   * What the OCI spec of a new container is built for (oci-spec.ts): absent, a pod VM; a host
   * pod gives its namespace files, the container's root file system and cgroup.
   */
  specTarget?(containerId: string, privileged: boolean): Promise<SpecTarget>;

  /**
   * In-place resize (runtime/resize.ts), where the backend can: the size in effect and the most
   * it can grow to, and a change to a size within that (done whole or not at all).
   */
  readonly sizing?: { current: PodSize; ceiling: PodSize };
  resize?(size: PodSize): Promise<void>;

  /**
   * ends the pod's processes: polite first, killed after `graceMs`. `discard`: the caller has
   * stopped the containers (their logs drained) and detached the volumes, so nothing left in the
   * pod needs an orderly end; a backend may then end it at once
   */
  stop(graceMs: number, o?: { discard?: boolean }): Promise<void>;
}

export interface PodBackend {
  /** the kind named in [runtime] handlers ("vm", "host") */
  readonly kind: string;
  readonly features: BackendFeatures;
  /** why this backend cannot run pods now (a binary missing …), or undefined when it can */
  readiness(): Promise<string | undefined>;
  /** refuses (PodvisorError failed_precondition …) a pod config this backend cannot run, before anything is made */
  admit(config: PodSandboxConfig): void;
  /**
   * Makes the pod of a new record (`rec.id`, `rec.config`) and fills the record's backend
   * fields (e.g. vm, network, cgroups). On failure everything made so far is removed before it
   * throws. Events of the pod go to `onEvent` from the start.
   */
  start(rec: SandboxRecord, onEvent: (ev: PodEvent) => void): Promise<Pod>;
  /**
   * How a started pod was made, as the start-latency metric's `path` label (VM: spare, clone,
   * cold); a few fixed values. Absent: the backend's kind.
   */
  startPath?(rec: SandboxRecord): string;
  /**
   * RunPodSandbox (or RestorePod) of `rec` is answered, started or failed: what the backend put
   * off so as not to slow that start runs now (the VM backend makes the next warm spare).
   */
  afterStart?(rec: SandboxRecord): void;
  /** Finds the pod of a record after a daemon restart; undefined when it is gone. */
  reconnect(rec: SandboxRecord, onEvent: (ev: PodEvent) => void): Promise<Pod | undefined>;
  /** After the pod stopped: frees what it held outside itself (network). Idempotent. */
  release(rec: SandboxRecord): Promise<void>;
  /** When the sandbox is removed: the rest (cgroups, runtime directory, host-path binds). Idempotent. */
  remove(rec: SandboxRecord): Promise<void>;
  /** Removes what `rel` bound into a pod that is gone (the container's host paths). */
  dropHostPaths(rec: SandboxRecord, rel: string): Promise<void>;
  /** Kills pods of this backend that no record knows (`known`: sandbox ids). */
  reapStrays(known: Set<string>): Promise<void>;
  /**
   * Undoes a start a crash interrupted (its record was still pending), after reapStrays:
   * everything start() may have made, including what the record does not name yet.
   */
  undoStart?(rec: SandboxRecord): Promise<void>;
  /**
   * Pod checkpoints (runtime/checkpoints.ts), where the backend can: saves the running pod
   * whole (its memory, devices and processes) into `dir` at one instant, resuming it after
   * when `resume`; says what the state needs to come back (checkpoint-format.ts).
   */
  checkpoint?(rec: SandboxRecord, pod: Pod, dir: string, o: { resume: boolean; containerNames?: Record<string, string> }): Promise<PodCheckpointState>;
  /**
   * Makes the pod of a new record (as start) from a checkpoint's state: the same processes,
   * memory and devices, a new identity (hello), network and host cgroup.
   */
  restore?(rec: SandboxRecord, from: PodRestoreSource, onEvent: (ev: PodEvent) => void): Promise<Pod>;
  /** what this host gives a checkpoint's `host` (compared key by key on restore) */
  checkpointHost?(): Record<string, string>;
  /**
   * The daemon stops (its pods keep running): frees what the backend holds that no pod needs to
   * stay alive or to be found again by a restarted daemon (host: its state dir's shared mount
   * when nothing is mounted under it).
   */
  close?(): Promise<void>;
}

/** What a backend saved of a pod (the VM backend: its size, devices and the file with its state). */
export interface PodCheckpointState {
  /** files of the checkpoint directory the backend wrote (relative), digested by the caller */
  files: string[];
  /** the backend's own description of what restore needs (VM: vcpus, memory, NICs, disks) */
  state: Record<string, unknown>;
  /** what the restore host must have the same of (VM: hypervisor inputs, guest build) */
  host: Record<string, string>;
}

export interface PodRestoreSource {
  dir: string;
  state: Record<string, unknown>;
  /** image id → its erofs file on this host now */
  imageFiles: Record<string, string>;
  /** the checkpointed pod's network (its addresses are dropped in the restored pod) */
  network: { interfaces: Array<{ addresses: string[] }> } | null;
  /** new host container id → the id the pod knows it by */
  containerIds: Record<string, string>;
  /**
   * host paths to bind into the new pod's share (bindHostPath) before its containers' share
   * mounts come back: the restored pod's own (its containers' configs), where the checkpointed
   * ones were (`rel`)
   */
  shareBinds: Array<{ hostPath: string; rel: string; readonly: boolean }>;
}

/** The backends a daemon runs with, by kind; one registration line per backend (daemon.ts). */
export class PodBackends {
  private readonly byKind = new Map<string, PodBackend>();

  register(b: PodBackend): this {
    this.byKind.set(b.kind, b);
    return this;
  }

  get(kind: string): PodBackend | undefined {
    return this.byKind.get(kind);
  }

  all(): PodBackend[] {
    return [...this.byKind.values()];
  }
}
