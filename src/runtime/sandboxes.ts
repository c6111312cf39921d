// Pod sandboxes: records, their lifecycle and locks, whatever kind of pod runs them. Run picks
// the pod backend from the runtime handler ([runtime] handlers) and has it make the pod; stop
// ends the pod (after its containers); remove forgets it. Records are durable, and a restarted
// daemon reconnects to the pods that are still running through their backends.
import type { LinuxContainerResources, PodSandboxConfig, PodSandboxFilter } from '../../cri-api/messages';
import crypto from 'node:crypto';
import { deadlineExceeded, failedPrecondition, hasCode, internal, invalidArgument, notFound, unavailable, unimplemented } from '../util/errors';
import type { Logger } from '../util/log';
import { stepTimer } from '../util/steps';
import { RecordStore } from '../store/record-store';
import { findByIdOrPrefix } from '../util/lookup';
import type { Config } from '../config/config';
import type { VolumeManager } from '../../storage/volume-manager';
import { KeyedMutex } from '../util/keyed-mutex';
import type { Pod, PodBackend, PodBackends, PodCheckpointState, PodEvent, PodImageMount, PodRestoreSource } from './pod-backend';
import { labelsMatch, SandboxRecord } from './records';
import { nowNs } from './container-log';
import path from 'node:path';
import { faultPoint } from '../util/fault';
import { checkResize, neededSize, podSize, type PodSize } from './resize';
import { podUserNamespace } from './userns';

export interface Sandbox {
  rec: SandboxRecord;
  pod: Pod | undefined;
}

/** Hooks the container side gives us (kept as callbacks to avoid a dependency cycle). */
export interface ContainerHooks {
  /** stops every container of the sandbox (the pod is about to go); true when every one has exited */
  stopAll(sandboxId: string): Promise<boolean>;
  /** the pod is gone: mark its containers exited */
  podGone(sandboxId: string): Promise<void>;
  /** removes every container of the sandbox */
  removeAll(sandboxId: string): Promise<void>;
  /** routes an event of this sandbox's pod */
  onEvent(sandboxId: string, ev: PodEvent): void;
  /** after a reconnect: re-adopt stdio streams and reconcile container states */
  reattach(sandboxId: string): Promise<void>;
}

/**
 * Told of each RunPodSandbox's outcome (the daemon's metrics): the backend, how the pod was made
 * (PodBackend.startPath, e.g. spare/clone/cold) and the seconds from the call to a ready pod.
 */
export interface SandboxObserver {
  started(backend: string, path: string, seconds: number): void;
  failed(backend: string): void;
}

/** The handler → backend choice: which backend runs a pod, or a clear refusal. */
export function chooseBackend(cfg: Config['runtime'], backends: PodBackends, handler: string, config: PodSandboxConfig): PodBackend {
  const kind = Object.prototype.hasOwnProperty.call(cfg.handlers, handler) ? cfg.handlers[handler] : undefined;
  if (kind === undefined) throw notFound(`runtime handler ${JSON.stringify(handler)} is not known to podvisor`);
  const ns = config?.linux?.security_context?.namespace_options ?? {};
  const hostNs = ns.network === 'NODE' || ns.pid === 'NODE' || ns.ipc === 'NODE';
  // host namespaces: refused outright by "reject"; with "host" the host backend runs such pods
  // when it exists, otherwise the handler's backend refuses them itself (admit)
  if (hostNs && cfg.hostNamespaces === 'reject') {
    throw failedPrecondition('pods in the host\'s network, PID or IPC namespace are refused here ([runtime] host_namespaces = "reject")');
  }
  if (hostNs && backends.get('host')) return backends.get('host')!;
  const backend = backends.get(kind);
  if (!backend) throw failedPrecondition(`runtime handler ${JSON.stringify(handler)} runs pods with the ${JSON.stringify(kind)} backend, which this podvisor does not have`);
  return backend;
}

export class SandboxManager {
  readonly sandboxes = new Map<string, Sandbox>();
  readonly lock = new KeyedMutex();
  private readonly store: RecordStore<SandboxRecord>;
  hooks!: ContainerHooks;

  constructor(
    private readonly cfg: Config,
    private readonly backends: PodBackends,
    private readonly volumes: VolumeManager,
    private readonly logger: Logger,
    private readonly observe?: SandboxObserver,
  ) {
    this.store = new RecordStore(path.join(cfg.root, 'sandboxes'));
  }

  get(id: string): Sandbox {
    const sb = this.find(id);
    if (!sb) throw notFound(`pod sandbox ${JSON.stringify(id)} not found`);
    return sb;
  }

  /** Looks a sandbox up by full id or unique prefix. */
  find(id: string): Sandbox | undefined {
    return findByIdOrPrefix(this.sandboxes, id);
  }

  save(sb: Sandbox): Promise<void> {
    return this.store.save(sb.rec);
  }

  /** The backend that runs a sandbox's pod (records made before backends existed: the VM's). */
  backendOf(rec: SandboxRecord): PodBackend {
    const b = this.backends.get(rec.backend ?? 'vm');
    if (!b) throw failedPrecondition(`pod sandbox ${rec.id} was made by the ${JSON.stringify(rec.backend)} backend, which this podvisor does not have`);
    return b;
  }

  async run(config: PodSandboxConfig, runtimeHandler: string): Promise<string> {
    return this.make(config, runtimeHandler, (backend, rec, onEvent) => backend.start(rec, onEvent));
  }

  /**
   * RestorePod's pod: made as RunPodSandbox makes one, by its backend's restore from a
   * checkpoint; `source` fills the record's restored parts (image mounts) and says what to
   * restore. The backend's refusals (failed_precondition …) keep their codes.
   */
  async restoreFrom(config: PodSandboxConfig, runtimeHandler: string, source: (rec: SandboxRecord, backend: PodBackend) => PodRestoreSource): Promise<string> {
    return this.make(config, runtimeHandler, async (backend, rec, onEvent) => {
      if (!backend.restore) throw failedPrecondition(`pods of the ${JSON.stringify(backend.kind)} backend cannot be restored from checkpoints`);
      return backend.restore(rec, source(rec, backend), onEvent);
    }, true);
  }

  /**
   * CheckpointPod's pod state: the backend saves the running pod into `dir` (under the
   * sandbox lock, so no container is created, started or removed meanwhile) and resumes it
   * when `resume`. `check` runs under the lock first (the caller's refusals; it may name the
   * pod's containers by id, for the backend's errors).
   */
  async checkpoint(id: string, dir: string, o: { resume: boolean; check: (sb: Sandbox) => Record<string, string> | void }): Promise<{ sb: Sandbox; saved: PodCheckpointState }> {
    const sb = this.get(id);
    const backend = this.backendOf(sb.rec);
    if (!backend.checkpoint) throw failedPrecondition(`pods of the ${JSON.stringify(backend.kind)} backend cannot be checkpointed`);
    return this.lock.run(sb.rec.id, async () => {
      const pod = sb.pod;
      if (!pod || sb.rec.state !== 'SANDBOX_READY') throw failedPrecondition(`pod sandbox ${sb.rec.id} is not running`);
      const containerNames = o.check(sb) ?? undefined;
      const saved = await backend.checkpoint!(sb.rec, pod, dir, { resume: o.resume, containerNames });
      return { sb, saved };
    });
  }

  private async make(
    config: PodSandboxConfig, runtimeHandler: string,
    start: (backend: PodBackend, rec: SandboxRecord, onEvent: (ev: PodEvent) => void) => Promise<Pod>, keepCodes = false,
  ): Promise<string> {
    const t0 = process.hrtime.bigint();
    const md = config?.metadata;
    if (!md?.name || !md?.namespace || !md?.uid) throw invalidArgument('sandbox config metadata needs name, namespace and uid');
    const backend = chooseBackend(this.cfg.runtime, this.backends, runtimeHandler || '', config);
    backend.admit(config);
    if (!backend.features.userNamespaces && podUserNamespace(config)) {
      throw failedPrecondition(`runtime handler ${JSON.stringify(runtimeHandler || '')} runs pods on the ${JSON.stringify(backend.kind)} backend, which has no user namespaces (hostUsers: false): use a VM handler`);
    }
    for (const sb of this.sandboxes.values()) {
      const m = sb.rec.config.metadata;
      if (m?.name === md.name && m?.namespace === md.namespace && m?.uid === md.uid && (m?.attempt ?? 0) === (md.attempt ?? 0)) {
        throw invalidArgument(`a sandbox for ${md.namespace}/${md.name} attempt ${md.attempt ?? 0} already exists: ${sb.rec.id}`);
      }
    }
    const notReady = await backend.readiness();
    if (notReady) throw unavailable(`runtime not ready: ${notReady}`);

    const id = crypto.randomBytes(32).toString('hex');
    const rec: SandboxRecord = {
      id,
      config,
      runtimeHandler: runtimeHandler || '',
      backend: backend.kind,
      createdAt: nowNs().toString(),
      state: 'SANDBOX_NOTREADY',
      vm: null,
      images: {},
      agentVersion: '',
      network: null,
    };
    const sb: Sandbox = { rec, pod: undefined };
    const T = stepTimer(this.logger, 'RunPodSandbox', { sandbox: id });
    // once the caller has its answer (or error): the work the backend put off so as not to
    // compete with this start (the VM backend's next spare)
    const answered = () => setImmediate(() => backend.afterStart?.(rec));
    return this.lock.run(id, async () => {
      this.sandboxes.set(id, sb);
      let pod: Pod | undefined;
      try {
        T.mark('admit');
        rec.pending = true;
        // in place before the first side effect (a killed daemon finds it); on disk while the pod
        // starts: what a machine crash would leave of the start (VM, netns, taps, cgroups) goes
        // with the machine, except a CNI IP lease on disk made within the fsync's few ms
        const { durable } = await this.store.write(rec);
        durable.catch(() => undefined); // awaited below
        T.mark('pending-written');
        faultPoint('sandbox.run:pending-saved');
        pod = await start(backend, rec, (ev) => this.hooks.onEvent(id, ev));
        T.mark('start');
        faultPoint('sandbox.run:booted');
        await durable;
        T.mark('pending-durable');
        rec.state = 'SANDBOX_READY';
        delete rec.pending;
        await this.save(sb);
        T.mark('saved');
        faultPoint('sandbox.run:ready-saved');
        this.adopt(sb, pod);
        this.observe?.started(backend.kind, backend.startPath?.(rec) ?? backend.kind, Number(process.hrtime.bigint() - t0) / 1e9);
        this.logger.info({ sandbox: id, pod: `${md.namespace}/${md.name}`, backend: backend.kind, accel: rec.vm?.accelerator, boot: rec.vm?.bootMode, spare: rec.vm?.spare ?? false }, 'pod sandbox ready');
        T.done();
        answered();
        return id;
      } catch (err) {
        T.done({ failed: true });
        answered();
        // a failed start: the backend removed what it made; a pod made but not recorded goes too
        this.observe?.failed(backend.kind);
        this.logger.error({ sandbox: id, err }, 'pod sandbox failed to start');
        if (pod) {
          await pod.stop(1000).catch(() => undefined);
          await backend.release(rec).catch(() => undefined);
          await backend.remove(rec).catch(() => undefined);
        }
        sb.pod = undefined;
        this.sandboxes.delete(id);
        await this.store.delete(rec).catch(() => undefined);
        if (keepCodes && hasCode(err, 'failed_precondition', 'invalid_argument', 'not_found', 'data_loss')) throw err;
        throw unavailable(`cannot start pod ${backend.kind === 'vm' ? 'VM' : backend.kind}: ${(err as Error).message}`);
      }
    });
  }

  private adopt(sb: Sandbox, pod: Pod): void {
    sb.pod = pod;
    pod.exited.then(async () => {
      if (sb.pod !== pod) return;
      await this.lock.run(sb.rec.id, async () => {
        // StopPodSandbox ended it (and saved the record): nothing to tell
        if (!this.sandboxes.has(sb.rec.id) || sb.pod !== pod || sb.rec.state !== 'SANDBOX_READY') return;
        this.logger.warn({ sandbox: sb.rec.id }, 'pod exited');
        sb.rec.state = 'SANDBOX_NOTREADY';
        await this.hooks.podGone(sb.rec.id);
        await this.save(sb).catch(() => undefined);
      });
    });
  }

  /**
   * The image's mount in the pod, made once: every container of that image (and every image
   * volume of it) shares it. The mounts are the sandbox's state, saved with its record.
   * `deadline` (ms since the epoch): the caller's; the guest waits up to it for the disk.
   * Call under the sandbox lock.
   */
  async ensureImage(sb: Sandbox, image: { id: string; erofsPath: string }, deadline?: number): Promise<string> {
    const have = sb.rec.images[image.id];
    if (have) return have.target;
    if (!sb.pod) throw failedPrecondition(`pod sandbox ${sb.rec.id} is not running`);
    const timeoutMs = deadline === undefined ? undefined : deadline - Date.now();
    if (timeoutMs !== undefined && timeoutMs <= 0) throw deadlineExceeded(`the caller's deadline passed before image ${image.id} was mounted in pod ${sb.rec.id}`);
    const m: PodImageMount = await sb.pod.mountImage(image.id, image.erofsPath, timeoutMs);
    sb.rec.images[image.id] = m;
    await this.save(sb);
    return m.target;
  }

  /** Undoes a container's host-path binds, in the running pod or, once it is gone, in what it left. */
  async unbindHostPaths(sandboxId: string, rel: string): Promise<void> {
    const sb = this.find(sandboxId);
    if (!sb) return;
    if (sb.pod) await sb.pod.unbindHostPaths(rel).catch(() => undefined);
    else await this.backendOf(sb.rec).dropHostPaths(sb.rec, rel);
  }

  /**
   * UpdatePodSandboxResources: the pod runs at the size its new resources (the sum of its
   * containers') ask for, within its ceiling; beyond it nothing changes and this says so.
   */
  async updateResources(id: string, resources: LinuxContainerResources | null | undefined): Promise<void> {
    if (!resources) throw invalidArgument('resources are required');
    const sb = this.get(id);
    await this.resizeTo(sb, () => podSize(resources, this.cfg.vm), 'update pod sandbox resources');
  }

  /**
   * A container's new limits (UpdateContainerResources) may need more than the pod runs at: the
   * pod grows (never shrinks) to fit them first, within its ceiling.
   */
  async growFor(id: string, resources: LinuxContainerResources): Promise<void> {
    const sb = this.get(id);
    const need = neededSize(resources);
    if (!sb.pod?.sizing) return; // a backend without resize: its cgroups alone bound the container
    await this.resizeTo(sb, (cur) => ({ vcpus: Math.max(cur.vcpus, need.vcpus), memoryMiB: Math.max(cur.memoryMiB, need.memoryMiB) }), 'update container resources');
  }

  private async resizeTo(sb: Sandbox, target: (current: PodSize) => PodSize, what: string): Promise<void> {
    await this.lock.run(sb.rec.id, async () => {
      const pod = sb.pod;
      if (!pod || sb.rec.state !== 'SANDBOX_READY') throw failedPrecondition(`pod sandbox ${sb.rec.id} is not running`);
      // UNIMPLEMENTED: kubelet takes UpdatePodSandboxResources as best effort then (its own pod
      // cgroup bounds such a pod) and goes on with the containers' UpdateContainerResources
      if (!pod.sizing || !pod.resize) throw unimplemented(`${what}: pods of the ${JSON.stringify(sb.rec.backend ?? 'vm')} backend are not resized as a whole (their containers' cgroups are their bounds)`);
      const { current, ceiling } = pod.sizing;
      const want = checkResize(target(current), ceiling, what);
      if (want.vcpus === current.vcpus && want.memoryMiB === current.memoryMiB) return;
      await pod.resize(want);
      sb.rec.size = want;
      await this.save(sb);
    });
  }

  async stop(id: string): Promise<void> {
    const sb = this.find(id);
    if (!sb) return; // CRI: stopping an unknown sandbox is not an error
    const T = stepTimer(this.logger, 'StopPodSandbox', { sandbox: sb.rec.id });
    const exited = await this.hooks.stopAll(sb.rec.id);
    T.mark('containers');
    await this.lock.run(sb.rec.id, async () => {
      T.mark('lock');
      const before = JSON.stringify(sb.rec);
      // volumes first: the guest unmounts and flushes before its disks go
      const target = sb.pod?.volumes;
      let discard = exited;
      if (target) {
        await this.volumes.detachAll(target).catch((err) => {
          discard = false;
          this.logger.warn({ sandbox: sb.rec.id, err }, 'volume detach failed');
        });
      }
      T.mark('volumes');
      // containers exited (logs drained), volumes detached: nothing in the pod needs an orderly
      // end; otherwise (a container that would not die, a volume not detached) the pod ends
      // its processes and syncs on its way down
      if (sb.pod) await sb.pod.stop(this.cfg.vm.stopTimeoutS * 1000, { discard });
      T.mark('pod');
      faultPoint('sandbox.stop:vm-stopped');
      sb.rec.state = 'SANDBOX_NOTREADY';
      await this.hooks.podGone(sb.rec.id);
      sb.rec.images = {};
      await this.backendOf(sb.rec).release(sb.rec);
      T.mark('release');
      faultPoint('sandbox.stop:network-down');
      // a pod stopped before (RemovePodSandbox stops it again) has nothing new to record
      if (JSON.stringify(sb.rec) !== before) await this.save(sb);
      T.mark('saved');
    });
    T.done();
  }

  async remove(id: string): Promise<void> {
    const sb = this.find(id);
    if (!sb) return;
    const T = stepTimer(this.logger, 'RemovePodSandbox', { sandbox: sb.rec.id });
    await this.stop(sb.rec.id);
    T.mark('stop');
    await this.hooks.removeAll(sb.rec.id);
    T.mark('containers');
    await this.lock.run(sb.rec.id, async () => {
      T.mark('lock');
      const target = sb.pod?.volumes;
      if (target) await this.volumes.detachAll(target).catch(() => undefined); // pod gone: only forgets state
      await this.backendOf(sb.rec).remove(sb.rec).catch((err) => {
        throw internal(`remove pod sandbox ${sb.rec.id}: ${(err as Error).message}`);
      });
      T.mark('backend');
      faultPoint('sandbox.remove:cgroup-left');
      this.sandboxes.delete(sb.rec.id);
      await this.store.delete(sb.rec);
      T.mark('record');
      faultPoint('sandbox.remove:record-deleted');
      this.logger.info({ sandbox: sb.rec.id }, 'pod sandbox removed');
    });
    T.done();
  }

  /** Pods whose processes run (a VM up, host namespaces held), by backend kind. */
  running(): Record<string, number> {
    const n: Record<string, number> = {};
    for (const { rec, pod } of this.sandboxes.values()) {
      if (pod?.alive()) n[rec.backend ?? 'vm'] = (n[rec.backend ?? 'vm'] ?? 0) + 1;
    }
    return n;
  }

  list(filter: PodSandboxFilter | null | undefined): SandboxRecord[] {
    return [...this.sandboxes.values()]
      .map((s) => s.rec)
      .filter((r) => !filter?.id || r.id === filter.id || r.id.startsWith(filter.id))
      .filter((r) => !filter?.state || r.state === filter.state.state)
      .filter((r) => labelsMatch(r.config.labels, filter?.label_selector));
  }

  /** Loads records and reconnects to pods that survived a daemon restart; reaps the rest. */
  async restore(): Promise<void> {
    const { records, broken } = await this.store.loadAll();
    for (const b of broken) this.logger.error({ file: b }, 'unreadable sandbox record skipped');
    const interrupted = records.filter((r) => r.pending);
    for (const rec of records) {
      if (rec.pending) continue; // undone below, once reapStrays has killed its VM
      const sb: Sandbox = { rec, pod: undefined };
      this.sandboxes.set(rec.id, sb);
      if (rec.state !== 'SANDBOX_READY') continue;
      const backend = this.backends.get(rec.backend ?? 'vm');
      const pod = await backend?.reconnect(rec, (ev) => this.hooks.onEvent(rec.id, ev)).catch((err) => {
        this.logger.error({ sandbox: rec.id, err }, 'reconnecting to the pod failed');
        return undefined;
      });
      if (!pod) {
        this.logger.warn({ sandbox: rec.id }, 'pod is gone after restart');
        rec.state = 'SANDBOX_NOTREADY';
        rec.images = {};
        await this.hooks.podGone(rec.id);
        await this.save(sb);
        continue;
      }
      this.adopt(sb, pod);
      await this.hooks.reattach(rec.id);
    }
    const known = new Set(this.sandboxes.keys());
    for (const b of this.backends.all()) await b.reapStrays(known);
    for (const rec of interrupted) await this.undoInterrupted(rec);
  }

  /**
   * A RunPodSandbox a crash interrupted (its record still pending): its VM is gone already
   * (reapStrays), so its backend takes away what else the start may have made, whether or not
   * the record says so; then the record goes. Kept pending (tried again at the next start) when
   * that fails.
   */
  private async undoInterrupted(rec: SandboxRecord): Promise<void> {
    try {
      const backend = this.backendOf(rec);
      if (backend.undoStart) await backend.undoStart(rec);
      else {
        await backend.release(rec);
        await backend.remove(rec);
      }
      await this.store.delete(rec);
      this.logger.warn({ sandbox: rec.id }, 'undid a pod start that a crash interrupted');
    } catch (err) {
      this.logger.error({ sandbox: rec.id, err }, 'cannot undo an interrupted pod start yet');
    }
  }
}
