// Containers inside pods: create/start/stop/remove through the pod (a VM's guest agent, a host
// pod's shims), stdio to CRI log files (written here from the pod's streams, or by the pod
// itself when it holds its containers' stdio: Pod.containerIo), exit seen from pod events
// (pushed, not polled), ExecSync.
import type { ContainerConfig, ContainerFilter, LinuxContainerResources, PodSandboxConfig } from '../../cri-api/messages';
import crypto from 'node:crypto';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { inContext, deadlineExceeded, failedPrecondition, invalidArgument, notFound, alreadyExists } from '../util/errors';
import type { ImageManager, ImageRecord } from '../image/manager';
import type { Logger } from '../util/log';
import { stepTimer } from '../util/steps';
import type { VolumeManager } from '../../storage/volume-manager';
import { RecordStore } from '../store/record-store';
import { findByIdOrPrefix } from '../util/lookup';
import { ContainerLog, nowNs } from './container-log';
import { KeyedMutex } from '../util/keyed-mutex';
import { buildSpec, deviceRules, ociResources } from './oci-spec';
import { checkMounts, hostPathBinds, planMounts } from './mount-plan';
import { checkpointArchive } from './checkpoint-format';
import { containerUserNamespace, podUserNamespace } from './userns';
import type { Pod, PodEvent, PodStream } from './pod-backend';

export { checkDevices } from './mount-plan';
import { ContainerRecord, labelsMatch } from './records';
import type { Sandbox, SandboxManager } from './sandboxes';
import { faultPoint } from '../util/fault';

const EXEC_OUTPUT_LIMIT = 16 * 1024 * 1024;
/**
 * After an ExecSync's exit, how long its output streams may take to end (the guest sends EOF
 * right behind the exit). A guest that never does must not keep them, nor the call, forever:
 * the output then ends where it got to. ExecSync's own timeout bounds it further when shorter.
 */
export const EXEC_IO_DRAIN_MS = 2_000;
/**
 * A CreateContainer without a gRPC deadline: how long the pod may take to create the container
 * (kubelet always sets one, its runtimeRequestTimeout, default 2 min; this is that default).
 */
export const CREATE_TIMEOUT_MS = 120_000;

export interface Live {
  rec: ContainerRecord;
  log?: ContainerLog;
  stdin?: PodStream;
  exitWaiters: Array<() => void>;
  /** the guest reported the exit (the record follows once the log is complete) */
  exitSeen?: boolean;
}

interface ExecWaiter {
  resolve: (ev: PodEvent) => void;
}

/** CRI ContainerEventType names. */
export type ContainerEventType = 'CONTAINER_CREATED_EVENT' | 'CONTAINER_STARTED_EVENT' | 'CONTAINER_STOPPED_EVENT' | 'CONTAINER_DELETED_EVENT';

/** A container's lifecycle step, told to subscribers as it happens (GetContainerEvents). */
export interface ContainerEvent {
  type: ContainerEventType;
  containerId: string;
  sandboxId: string;
  /** when it happened, ns since the epoch */
  at: bigint;
}

export function signalNumber(sig: unknown): number | undefined {
  if (typeof sig === 'number') return sig > 0 && sig < 65 ? sig : undefined;
  if (typeof sig !== 'string' || !sig) return undefined;
  if (/^\d+$/.test(sig)) return signalNumber(Number(sig));
  const name = sig.toUpperCase().replace(/^SIGNAL_/, '');
  const full = name.startsWith('SIG') ? name : `SIG${name}`;
  return (os.constants.signals as Record<string, number>)[full];
}

export class ContainerManager {
  readonly containers = new Map<string, Live>();
  private readonly store: RecordStore<ContainerRecord>;
  private readonly lock = new KeyedMutex();
  private readonly execWaiters = new Map<string, ExecWaiter>();
  /** containers whose CreateContainer a crash interrupted (removed once the pods are back) */
  private readonly interrupted = new Set<string>();
  private readonly listeners = new Set<(ev: ContainerEvent) => void>();

  constructor(
    root: string,
    private readonly sandboxes: SandboxManager,
    private readonly images: ImageManager,
    private readonly volumes: VolumeManager,
    private readonly logger: Logger,
  ) {
    this.store = new RecordStore(path.join(root, 'containers'));
    sandboxes.hooks = {
      stopAll: (id) => this.stopAll(id),
      podGone: (id) => this.podGone(id),
      removeAll: (id) => this.removeAll(id),
      onEvent: (id, ev) => this.onEvent(id, ev),
      reattach: (id) => this.reattach(id),
    };
  }

  /** Calls `fn` for every container event from now on, synchronously as it happens; returns the unsubscribe. */
  subscribe(fn: (ev: ContainerEvent) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private emit(rec: ContainerRecord, type: ContainerEventType): void {
    if (!this.listeners.size) return;
    const ev: ContainerEvent = { type, containerId: rec.id, sandboxId: rec.sandboxId, at: nowNs() };
    for (const fn of this.listeners) {
      try {
        fn(ev);
      } catch (err) {
        this.logger.error({ container: rec.id, event: type, err }, 'container event listener failed');
      }
    }
  }

  get(id: string): Live {
    const c = this.find(id);
    if (!c) throw notFound(`container ${JSON.stringify(id)} not found`);
    return c;
  }

  find(id: string): Live | undefined {
    return findByIdOrPrefix(this.containers, id);
  }

  isImageInUse(imageId: string): boolean {
    for (const c of this.containers.values()) if (c.rec.imageId === imageId || c.rec.imageVolumes?.some((v) => v.imageId === imageId)) return true;
    return false;
  }

  /**
   * `deadline` (ms since the epoch): the caller's (kubelet's runtimeRequestTimeout); the guest's
   * create is bounded by it, or by CREATE_TIMEOUT_MS when the caller set none.
   */
  async create(sandboxId: string, config: ContainerConfig, sandboxConfig: PodSandboxConfig | null | undefined, opts: { deadline?: number } = {}): Promise<string> {
    if (!config?.metadata?.name) throw invalidArgument('container config metadata.name is required');
    if (!config.image?.image) throw invalidArgument('container config image is required');
    const sb = this.sandboxes.get(sandboxId);
    if (sb.rec.state !== 'SANDBOX_READY' || !sb.pod) throw failedPrecondition(`pod sandbox ${sb.rec.id} is not ready`);
    const md = config.metadata;
    for (const c of this.containers.values()) {
      const m = c.rec.config.metadata;
      if (c.rec.sandboxId === sb.rec.id && m?.name === md.name && (m?.attempt ?? 0) === (md.attempt ?? 0)) {
        throw alreadyExists(`container ${md.name} attempt ${md.attempt ?? 0} already exists in pod ${sb.rec.id}: ${c.rec.id}`);
      }
    }
    const logPath = resolveLogPath(sandboxConfig?.log_directory || sb.rec.config.log_directory, config.log_path);
    const image = this.images.resolve(config.image.image);
    if (!image) {
      const archive = await checkpointArchive(config.image.image);
      if (archive) {
        throw failedPrecondition(
          `image ${config.image.image} is ${archive === 'podvisor' ? 'a podvisor container checkpoint (CheckpointContainer)' : 'a checkpoint archive'}, not an image: ` +
            `a container of a VM pod cannot be restored on its own into a running pod; restore its whole pod with RestorePod (checkpoint_path ${config.image.image})`,
        );
      }
      throw notFound(`image ${JSON.stringify(config.image.image)} not found: pull it first`);
    }
    const checked = checkMounts(config, (ref) => this.images.resolve(ref));
    const targetPid = this.targetPid(config);
    const userns = containerUserNamespace(podUserNamespace(sb.rec.config), config.linux?.security_context?.namespace_options);
    if (config.linux?.security_context?.supplemental_groups_policy === 'Strict' && !this.sandboxes.backendOf(sb.rec).features.supplementalGroupsPolicy) {
      throw failedPrecondition(`SupplementalGroupsPolicy Strict is not honoured by the ${JSON.stringify(sb.rec.backend ?? 'vm')} pod backend`);
    }

    const id = crypto.randomBytes(32).toString('hex');
    const rec = newRecord(id, sb.rec.id, config, image, logPath, checked.imageVolumes);
    const live: Live = { rec, exitWaiters: [] };
    const images = [image.id, ...checked.imageVolumes.map((v) => v.image.id)];
    for (const i of images) this.images.acquire(i);
    const T = stepTimer(this.logger, 'CreateContainer', { container: id, sandbox: sb.rec.id });
    try {
      await this.sandboxes.lock.run(sb.rec.id, async () => {
        T.mark('lock');
        const pod = sb.pod;
        if (!pod || sb.rec.state !== 'SANDBOX_READY') throw failedPrecondition(`pod sandbox ${sb.rec.id} is not ready`);
        rec.pending = true;
        // the pending record is written while the image is mounted: the image mount is the pod's
        // state (the sandbox record holds it, written before ensureImage returns), not a side
        // effect of this container, so it needs no pending record before it; the container's
        // own side effects (volumes, binds, the guest's create) come after both
        const ensureImage = (img: { id: string; erofsPath: string }) => this.sandboxes.ensureImage(sb, img, opts.deadline);
        const [pending, mounted] = await Promise.allSettled([
          this.store.save(rec).then(() => T.mark('pending-saved')),
          ensureImage(image).then((target) => (T.mark('image'), target)),
        ]);
        if (pending.status === 'rejected') throw pending.reason;
        faultPoint('container.create:pending-saved');
        if (mounted.status === 'rejected') throw mounted.reason;
        const rootfs = mounted.value;
        const { mounts, devices } = await planMounts({ pod, podUid: sb.rec.config.metadata?.uid ?? '', volumes: this.volumes, ensureImage, deadline: opts.deadline }, config, checked, { volumes: rec.volumes, hostPathDir: rec.shareDir });
        T.mark('mounts');
        rec.deviceRules = deviceRules(!!config.linux?.security_context?.privileged, devices);
        // a pod VM's spec, or a host pod's (its namespace files, the container's root and cgroup)
        const target = pod.specTarget ? await pod.specTarget(id, !!config.linux?.security_context?.privileged) : undefined;
        const { spec, username, groupsPolicy } = buildSpec({ target, config, sandboxConfig: sandboxConfig ?? sb.rec.config, imageConfig: image.config, mounts, devices, targetPid, userns });
        T.mark('spec');
        const timeoutMs = (opts.deadline ?? Date.now() + CREATE_TIMEOUT_MS) - Date.now();
        if (timeoutMs <= 0) throw deadlineExceeded(`the caller's deadline passed before the guest was asked to create container ${md.name}`);
        await this.createInPod(pod, live, rootfs, spec, username, groupsPolicy, timeoutMs);
        T.mark('guest');
        faultPoint('container.create:created-in-guest');
        delete rec.pending;
        await this.store.save(rec);
        T.mark('saved');
        faultPoint('container.create:saved');
      });
    } catch (err) {
      T.done({ failed: true });
      this.containers.delete(id);
      await this.store.delete(rec).catch(() => undefined);
      for (const i of images) this.images.release(i);
      await live.log?.close();
      await this.releaseVolumes(rec, sb);
      await this.sandboxes.unbindHostPaths(sb.rec.id, rec.shareDir);
      throw inContext(err, `create container ${md.name}`);
    }
    this.logger.info({ container: id, sandbox: sb.rec.id, name: md.name, image: image.id }, 'container created');
    this.emit(rec, 'CONTAINER_CREATED_EVENT');
    T.done();
    return id;
  }

  /** Opens the container's stdio streams to its log and creates it in the pod. */
  private async createInPod(pod: Pod, live: Live, rootfs: string, spec: object, username: string | null, groupsPolicy: 'merge' | 'strict', timeoutMs: number): Promise<void> {
    const { rec } = live;
    const config = rec.config;
    if (pod.containerIo) {
      // the pod holds the stdio and writes the log itself
      this.containers.set(rec.id, live);
      await pod.createContainer({
        id: rec.id,
        rootfs: { image: rootfs, readonly: !!config.linux?.security_context?.readonly_rootfs },
        spec,
        username,
        stdio: { stdin: 0, stdout: 0, stderr: 0, tty: !!config.tty, stdin_once: !!config.stdin_once },
      }, timeoutMs, { logPath: rec.logPath, stdin: !!config.stdin });
      return;
    }
    const stdout = pod.openStream();
    const stderr = config.tty ? undefined : pod.openStream();
    const stdin = config.stdin ? pod.openStream() : undefined;
    rec.streams = { stdin: stdin?.id ?? 0, stdout: stdout.id, stderr: stderr?.id ?? 0 };
    live.log = new ContainerLog(rec.logPath || null);
    live.log.pump('stdout', stdout);
    if (stderr) live.log.pump('stderr', stderr);
    live.stdin = stdin;
    this.containers.set(rec.id, live);
    try {
      const res = await pod.createContainer({
        id: rec.id,
        rootfs: { image: rootfs, readonly: !!config.linux?.security_context?.readonly_rootfs },
        spec,
        username,
        groups_policy: groupsPolicy,
        stdio: { ...rec.streams, tty: !!config.tty, stdin_once: !!config.stdin_once },
      }, timeoutMs);
      rec.user = effectiveUser(res?.user);
    } catch (err) {
      stdout.destroy();
      stderr?.destroy();
      stdin?.destroy();
      throw err;
    }
  }

  private targetPid(config: ContainerConfig): number | undefined {
    const ns = config.linux?.security_context?.namespace_options;
    if (ns?.pid !== 'TARGET') return undefined;
    const t = this.find(ns.target_id ?? '');
    if (!t || t.rec.state !== 'CONTAINER_RUNNING') throw notFound(`namespace target container ${JSON.stringify(ns.target_id)} is not running`);
    return t.rec.pid;
  }

  /**
   * `deadline` (ms since the epoch): the caller's, as for create; the guest's start is bounded by
   * it (containerd has no fixed bound either), or by CREATE_TIMEOUT_MS when the caller set none.
   * A fixed 30 s failed starts in pod VMs starved of CPU (TCG, load ~70) with StartError.
   */
  async start(id: string, opts: { deadline?: number } = {}): Promise<void> {
    const c = this.get(id);
    await this.lock.run(c.rec.id, async () => {
      if (c.rec.state !== 'CONTAINER_CREATED') throw failedPrecondition(`container ${c.rec.id} is ${c.rec.state}, not CONTAINER_CREATED`);
      const pod = this.podOf(c);
      c.rec.startedAt = nowNs().toString();
      const T = stepTimer(this.logger, 'StartContainer', { container: c.rec.id });
      try {
        const timeoutMs = (opts.deadline ?? Date.now() + CREATE_TIMEOUT_MS) - Date.now();
        if (timeoutMs <= 0) throw deadlineExceeded(`the caller's deadline passed before container ${c.rec.id} could be started`);
        const res = await pod.startContainer(c.rec.id, timeoutMs);
        T.mark('guest');
        faultPoint('container.start:started-in-guest');
        c.rec.pid = Number(res?.pid ?? 0);
        if (c.rec.state === 'CONTAINER_CREATED') c.rec.state = 'CONTAINER_RUNNING';
      } catch (err) {
        c.rec.state = 'CONTAINER_EXITED';
        c.rec.finishedAt = nowNs().toString();
        c.rec.exitCode = 128;
        c.rec.reason = 'StartError';
        c.rec.message = (err as Error).message;
        await this.store.save(c.rec);
        this.emit(c.rec, 'CONTAINER_STOPPED_EVENT');
        throw inContext(err, `start container ${c.rec.id}`);
      }
      await this.store.save(c.rec);
      T.mark('saved');
      this.emit(c.rec, 'CONTAINER_STARTED_EVENT');
      T.done();
    });
  }

  podOf(c: Live) {
    const sb = this.sandboxes.find(c.rec.sandboxId);
    if (!sb?.pod || sb.rec.state !== 'SANDBOX_READY') throw failedPrecondition(`pod sandbox ${c.rec.sandboxId} of container ${c.rec.id} is not running`);
    return sb.pod;
  }

  async stop(id: string, timeoutS: number): Promise<void> {
    const c = this.find(id);
    if (!c) return; // idempotent: an unknown container is already stopped
    if (c.rec.state !== 'CONTAINER_RUNNING') return;
    const pod = this.podOf(c);
    const exited = this.waitExit(c);
    if (timeoutS > 0) {
      await pod.signalContainer(c.rec.id, c.rec.stopSignal, false).catch(() => undefined);
      if (await within(exited, timeoutS * 1000)) return;
      this.logger.info({ container: c.rec.id, timeoutS }, 'stop signal timed out; killing');
    }
    await pod.signalContainer(c.rec.id, 9, true).catch(() => undefined);
    if (!(await within(exited, 10_000))) throw deadlineExceeded(`container ${c.rec.id} did not exit after SIGKILL`);
  }

  private waitExit(c: Live): Promise<void> {
    if (c.rec.state !== 'CONTAINER_RUNNING' && c.rec.state !== 'CONTAINER_CREATED') return Promise.resolve();
    return new Promise((resolve) => c.exitWaiters.push(resolve));
  }

  async remove(id: string): Promise<void> {
    const c = this.find(id);
    if (!c) return;
    if (c.rec.state === 'CONTAINER_RUNNING') await this.stop(c.rec.id, 0).catch(() => undefined);
    await this.lock.run(c.rec.id, async () => {
      if (!this.containers.has(c.rec.id)) return;
      const sb = this.sandboxes.find(c.rec.sandboxId);
      if (sb?.pod?.alive() && sb.pod.connected()) {
        await sb.pod.deleteContainer(c.rec.id).catch((err) => {
          this.logger.warn({ container: c.rec.id, err }, 'agent could not delete container');
        });
      }
      await this.forget(c, sb);
    });
  }

  private async releaseVolumes(rec: ContainerRecord, sb: Sandbox | undefined): Promise<void> {
    const target = sb?.pod?.volumes;
    if (!target) return; // the pod is gone: RemovePodSandbox forgets its attachments
    for (const key of rec.volumes ?? []) {
      await this.volumes.release(target, key).catch((err) => this.logger.warn({ container: rec.id, volume: key, err }, 'volume release failed'));
    }
  }

  private async forget(c: Live, sb: Sandbox | undefined): Promise<void> {
    c.stdin?.destroy();
    await c.log?.close();
    await this.releaseVolumes(c.rec, sb);
    if (sb) await this.sandboxes.unbindHostPaths(sb.rec.id, c.rec.shareDir).catch(() => undefined);
    this.containers.delete(c.rec.id);
    this.images.release(c.rec.imageId);
    for (const v of c.rec.imageVolumes ?? []) this.images.release(v.imageId);
    await this.store.delete(c.rec);
    this.logger.info({ container: c.rec.id, sandbox: c.rec.sandboxId }, 'container removed');
    this.emit(c.rec, 'CONTAINER_DELETED_EVENT');
  }

  /**
   * The containers a caller may know of: not those whose CreateContainer has not returned yet
   * (as containerd, which stores a container at the end of its create). A pod VM's create takes
   * seconds in the guest; listed meanwhile as CONTAINER_CREATED and newer than the pod's exited
   * run of the same name, it made kubelet's container GC (newest dead one per name kept, and
   * CREATED counts as dead) remove that previous run, whose logs `kubectl logs --previous` reads.
   */
  list(filter: ContainerFilter | null | undefined): ContainerRecord[] {
    return [...this.containers.values()]
      .map((c) => c.rec)
      .filter((r) => !r.pending)
      .filter((r) => !filter?.id || r.id === filter.id || r.id.startsWith(filter.id))
      .filter((r) => !filter?.state || r.state === filter.state.state)
      .filter((r) => !filter?.pod_sandbox_id || r.sandboxId === filter.pod_sandbox_id || r.sandboxId.startsWith(filter.pod_sandbox_id))
      .filter((r) => labelsMatch(r.config.labels, filter?.label_selector));
  }

  async updateResources(id: string, linux: LinuxContainerResources | null | undefined): Promise<void> {
    if (!linux) throw invalidArgument('linux resources are required');
    const c = this.get(id);
    if (c.rec.state !== 'CONTAINER_RUNNING' && c.rec.state !== 'CONTAINER_CREATED') throw failedPrecondition(`container ${c.rec.id} is not running`);
    // the pod first: limits beyond what it runs at make it grow (or fail before anything changed)
    await this.sandboxes.growFor(c.rec.sandboxId, linux);
    try {
      await this.podOf(c).updateContainer(c.rec.id, ociResources(linux, c.rec.deviceRules ?? []));
    } catch (err) {
      throw inContext(err, `update container ${c.rec.id}`);
    }
    c.rec.config = { ...c.rec.config, linux: { ...c.rec.config.linux, resources: linux } };
    await this.store.save(c.rec);
  }

  async reopenLog(id: string): Promise<void> {
    const c = this.get(id);
    if (c.rec.state !== 'CONTAINER_RUNNING') throw failedPrecondition(`container ${c.rec.id} is not running`);
    const io = this.podOf(c).containerIo;
    if (io) await io.reopenLog(c.rec.id);
    else await c.log?.reopen();
  }

  async execSync(id: string, cmd: string[], timeoutS: number): Promise<{ stdout: Buffer; stderr: Buffer; exitCode: number }> {
    if (!Array.isArray(cmd) || cmd.length === 0) throw invalidArgument('cmd is required');
    const c = this.get(id);
    if (c.rec.state !== 'CONTAINER_RUNNING') throw failedPrecondition(`container ${c.rec.id} is not running`);
    const pod = this.podOf(c);
    const execId = crypto.randomBytes(8).toString('hex');
    const stdout = pod.openStream();
    const stderr = pod.openStream();
    const out = collect(stdout);
    const err = collect(stderr);
    const exit = this.expectExecExit(execId);
    const t0 = Date.now();
    const T = stepTimer(this.logger, 'ExecSync', { container: c.rec.id, execId });
    try {
      await pod.exec({
        container_id: c.rec.id, exec_id: execId, args: cmd, env: null, cwd: null, tty: false,
        stdin: 0, stdout: stdout.id, stderr: stderr.id,
      });
      T.mark('started');
      const done = timeoutS > 0 ? await within(exit, timeoutS * 1000) : (await exit, true);
      T.mark('exit');
      if (!done) {
        await pod.signalProcess(c.rec.id, execId, 9).catch(() => undefined);
        throw deadlineExceeded(`command ${JSON.stringify(cmd)} timed out after ${timeoutS}s`);
      }
      const ev = await exit;
      const left = timeoutS > 0 ? timeoutS * 1000 - (Date.now() - t0) : EXEC_IO_DRAIN_MS;
      if (!(await within(Promise.all([out, err]), Math.max(200, Math.min(left, EXEC_IO_DRAIN_MS))))) {
        this.logger.warn({ container: c.rec.id, execId }, 'ExecSync output did not end after the exit; returning what arrived');
        stdout.destroy();
        stderr.destroy();
      }
      T.mark('output');
      T.done();
      return { stdout: await out, stderr: await err, exitCode: Number(ev.exit_code ?? -1) };
    } catch (e) {
      stdout.destroy();
      stderr.destroy();
      throw inContext(e, 'exec');
    } finally {
      this.forgetExec(execId);
    }
  }

  /** Registers interest in an exec's exit before it starts (the event may beat the reply). */
  expectExecExit(execId: string): Promise<PodEvent> {
    return new Promise<PodEvent>((resolve) => this.execWaiters.set(execId, { resolve }));
  }

  forgetExec(execId: string): void {
    this.execWaiters.delete(execId);
  }

  private onEvent(sandboxId: string, ev: PodEvent): void {
    if (ev.type !== 'exit') return;
    if (typeof ev.exec_id === 'string' && ev.exec_id) {
      this.execWaiters.get(ev.exec_id)?.resolve(ev);
      return;
    }
    const c = this.containers.get(String(ev.container_id));
    if (!c || c.rec.sandboxId !== sandboxId) return; // a guest may not speak for another pod's containers
    const code = Number.isInteger(ev.exit_code) ? (ev.exit_code as number) : 255;
    // A guest may repeat an exit: only the first changes anything (one durable write, one line),
    // and repeats cost nothing, not even a wait.
    if (c.rec.state === 'CONTAINER_EXITED' || c.exitSeen) return;
    c.exitSeen = true;
    // The agent sends the exit after its streams' EOF; the last log record (an unterminated line)
    // is written once they end. Report the exit only when the log is complete, so that kubelet's
    // FallbackToLogsOnError message reads it all (bounded: a host disk that stalls cannot hold it).
    const logged = c.log ? within(c.log.drained(), 2000) : Promise.resolve(true);
    void logged.then(async () => {
      // Removed while the log drained (an interrupted create's undo after a restart, a remove):
      // no exit to report (and its deleted record is never written again: RecordStore).
      if (this.containers.get(c.rec.id) !== c) return;
      if (!this.markExited(c, code, ev.oom_killed ? 'OOMKilled' : code === 0 ? 'Completed' : 'Error', '')) return;
      this.logger.info({ container: c.rec.id, exitCode: code }, 'container exited');
      // a remove from here on deletes the record after this write lands, never before it
      await this.store.save(c.rec).catch(() => undefined);
    });
  }

  /** Records the exit; false when the container had exited already (nothing changed). */
  private markExited(c: Live, code: number, reason: string, message: string): boolean {
    if (c.rec.state === 'CONTAINER_EXITED') return false;
    c.rec.state = 'CONTAINER_EXITED';
    c.rec.exitCode = code;
    c.rec.reason = reason;
    c.rec.message = message;
    c.rec.finishedAt = nowNs().toString();
    c.stdin?.destroy();
    for (const w of c.exitWaiters.splice(0)) w();
    this.emit(c.rec, 'CONTAINER_STOPPED_EVENT');
    return true;
  }

  private ofSandbox(sandboxId: string): Live[] {
    return [...this.containers.values()].filter((c) => c.rec.sandboxId === sandboxId);
  }

  private async stopAll(sandboxId: string): Promise<boolean> {
    const stopped = await Promise.all(this.ofSandbox(sandboxId).map((c) => this.stop(c.rec.id, 0).then(() => true, () => false)));
    return stopped.every(Boolean);
  }

  private async podGone(sandboxId: string): Promise<void> {
    for (const c of this.ofSandbox(sandboxId)) {
      if (c.rec.state === 'CONTAINER_RUNNING' || c.rec.state === 'CONTAINER_CREATED') {
        const wasRunning = c.rec.state === 'CONTAINER_RUNNING';
        this.markExited(c, wasRunning ? 137 : 0, wasRunning ? 'Error' : 'ContainerCannotRun', 'the pod stopped');
        await this.store.save(c.rec).catch(() => undefined);
      }
    }
  }

  private async removeAll(sandboxId: string): Promise<void> {
    for (const c of this.ofSandbox(sandboxId)) await this.remove(c.rec.id);
  }

  private async reattach(sandboxId: string): Promise<void> {
    const sb = this.sandboxes.find(sandboxId);
    if (!sb?.pod) return;
    for (const c of this.ofSandbox(sandboxId)) {
      if (c.rec.state !== 'CONTAINER_RUNNING' && c.rec.state !== 'CONTAINER_CREATED') continue;
      if (!sb.pod.containerIo) {
        c.log = new ContainerLog(c.rec.logPath || null);
        if (c.rec.streams.stdout) c.log.pump('stdout', sb.pod.adoptStream(c.rec.streams.stdout));
        if (c.rec.streams.stderr) c.log.pump('stderr', sb.pod.adoptStream(c.rec.streams.stderr));
        if (c.rec.streams.stdin) c.stdin = sb.pod.adoptStream(c.rec.streams.stdin);
      }
      try {
        const st = await sb.pod.containerState(c.rec.id);
        if (st.status === 'running' && c.rec.state === 'CONTAINER_CREATED') {
          // started in the guest, but the daemon ended before it recorded that
          c.rec.state = 'CONTAINER_RUNNING';
          c.rec.pid = Number(st.pid ?? 0);
          if (c.rec.startedAt === '0') c.rec.startedAt = nowNs().toString();
          await this.store.save(c.rec);
        } else if (st.status === 'stopped') {
          const code = Number(st.exit_code ?? 255);
          this.markExited(c, code, st.oom_killed ? 'OOMKilled' : code === 0 ? 'Completed' : 'Error', '');
          await this.store.save(c.rec);
        }
      } catch (err) {
        this.logger.warn({ container: c.rec.id, err }, 'container unknown to the agent after restart');
        this.markExited(c, 255, 'Error', 'lost while podvisor restarted');
        await this.store.save(c.rec);
      }
    }
  }

  /**
   * Removes the containers whose create a crash interrupted (their records still pending):
   * from the guest when their pod came back, then their binds, volumes, images and records.
   * Runs after the sandboxes were restored.
   */
  async undoInterrupted(): Promise<void> {
    for (const id of [...this.interrupted]) {
      this.interrupted.delete(id);
      this.logger.warn({ container: id }, 'removing a container whose create a crash interrupted');
      await this.remove(id).catch((err) => this.logger.error({ container: id, err }, 'cannot remove an interrupted container'));
    }
  }

  /**
   * RestorePod's containers: records of containers its pod brought back running (or as they
   * were), saved and taken up as after a daemon restart: their streams adopted, their states
   * asked of the pod.
   */
  /** The host paths a VM pod's share holds for a container of `config` (mount-plan.ts hostPathBinds). */
  hostPathBinds(config: ContainerConfig, podUid: string): ReturnType<typeof hostPathBinds> {
    return hostPathBinds(config, podUid, this.volumes);
  }

  async adoptRestored(sandboxId: string, recs: ContainerRecord[]): Promise<void> {
    for (const rec of recs) {
      await this.store.save(rec);
      this.containers.set(rec.id, { rec, exitWaiters: [] });
      this.images.acquire(rec.imageId);
      for (const v of rec.imageVolumes ?? []) this.images.acquire(v.imageId);
      this.emit(rec, 'CONTAINER_CREATED_EVENT');
      if (rec.state !== 'CONTAINER_CREATED') this.emit(rec, 'CONTAINER_STARTED_EVENT');
    }
    await this.reattach(sandboxId);
  }

  async restore(): Promise<void> {
    const { records, broken } = await this.store.loadAll();
    for (const b of broken) this.logger.error({ file: b }, 'unreadable container record skipped');
    for (const rec of records) {
      if (rec.pending) this.interrupted.add(rec.id);
      this.containers.set(rec.id, { rec, exitWaiters: [] });
      this.images.acquire(rec.imageId);
      for (const v of rec.imageVolumes ?? []) this.images.acquire(v.imageId);
    }
  }
}

/** A new container's record, before anything of it exists in the pod. */
function newRecord(id: string, sandboxId: string, config: ContainerConfig, image: ImageRecord, logPath: string, imageVolumes: Array<{ containerPath: string; image: ImageRecord }>): ContainerRecord {
  return {
    id,
    sandboxId,
    config,
    imageId: image.id,
    imageSpec: config.image ?? {},
    imageRef: image.repoDigests[0] ?? image.id,
    createdAt: nowNs().toString(),
    startedAt: '0',
    finishedAt: '0',
    state: 'CONTAINER_CREATED',
    exitCode: 0,
    reason: '',
    message: '',
    logPath,
    pid: 0,
    stopSignal: signalNumber(config.stop_signal && config.stop_signal !== 'SIGNAL_RUNTIME_DEFAULT' ? config.stop_signal : image.config?.config?.StopSignal) ?? 15,
    streams: { stdin: 0, stdout: 0, stderr: 0 },
    shareDir: `c/${id}`,
    volumes: [],
    imageVolumes: imageVolumes.map((v) => ({ containerPath: v.containerPath, imageId: v.image.id })),
  };
}

/** The identity a pod reports for a container's process (untrusted: checked). */
export function effectiveUser(u: unknown): ContainerRecord['user'] {
  const id = (v: unknown) => (typeof v === 'number' && Number.isInteger(v) && v >= 0 && v < 2 ** 32 ? v : undefined);
  if (!u || typeof u !== 'object') return undefined;
  const o = u as Record<string, unknown>;
  const uid = id(o.uid);
  const gid = id(o.gid);
  const groups = Array.isArray(o.additional_gids) ? o.additional_gids.slice(0, 4096).map(id) : [];
  if (uid === undefined || gid === undefined || groups.some((g) => g === undefined)) return undefined;
  return { uid, gid, supplementalGroups: groups as number[] };
}

/** The log file must stay inside the pod's log directory. */
export function resolveLogPath(dir: string | undefined, rel: string | undefined): string {
  if (!rel) return '';
  if (!dir) throw invalidArgument('log_path given but the sandbox has no log_directory');
  if (path.isAbsolute(rel)) throw invalidArgument(`log_path ${JSON.stringify(rel)} must be relative to the log directory`);
  const abs = path.resolve(dir, rel);
  if (!abs.startsWith(path.resolve(dir) + path.sep)) throw invalidArgument(`log_path ${JSON.stringify(rel)} escapes the log directory`);
  return abs;
}

function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    p.then(() => {
      clearTimeout(t);
      resolve(true);
    });
  });
}

async function collect(s: PodStream): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  try {
    for await (const chunk of s as AsyncIterable<Buffer>) {
      if (n < EXEC_OUTPUT_LIMIT) parts.push(chunk.subarray(0, EXEC_OUTPUT_LIMIT - n));
      n += chunk.length;
    }
  } catch {
    /* reset: return what arrived */
  }
  return Buffer.concat(parts);
}
