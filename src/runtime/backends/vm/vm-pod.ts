// A running pod VM behind the Pod interface (runtime/pod-backend.ts): the hypervisor's Vm plus
// the agent connection, the identity handshake, the image disks it has mounted, and the binds
// that feed its share. Container operations go to the guest agent as they are (the Pod
// interface takes the guest API's shapes); it is also the target volume drivers attach to
// (storage/volume-driver.ts).
import crypto from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { AgentClient, AgentEvent, type AgentCallObserver } from '../../../agent/client';
import { hello } from '../../../agent/hello';
import type { GuestParams, GuestResult } from '../../../agent/api';
import type { BlockAddress, BlockAttachment, BlockSource } from '../../../util/block-source';
import type { Logger } from '../../../util/log';
import { stepTimer } from '../../../util/steps';
import type { Vm } from '../../../vm/hypervisor';
import type { GuestDiskMount, GuestNfsMount, PodVolumeTarget } from '../../../../storage/volume-driver';
import { deadlineExceeded, failedPrecondition } from '../../../util/errors';
import { run } from '../../../util/exec-file';
import type { Pod, PodEvent, PodImageMount, PodStream } from '../../pod-backend';
import type { MemoryVolumeSpec } from '../../memory-volume';
import type { PodSize } from '../../resize';

export const GUEST_SHARE = '/run/podvisor/shared';
export const GUEST_IMAGES = '/run/podvisor/images';
/** where tmpfs.mount puts a pod's memory-backed volumes (guest/PROTOCOL.md) */
export const GUEST_TMPFS = '/run/podvisor/tmpfs';

export interface SetupParams {
  hostname: string;
  dns: { servers: string[]; searches: string[]; options: string[] } | null;
  sysctls: Record<string, string>;
}

/** QEMU's (the VM process's) private memory, bytes: the pod's own cost on the host. */
export async function vmPrivateBytes(pid: number): Promise<number | undefined> {
  try {
    const text = await fsp.readFile(`/proc/${pid}/smaps_rollup`, 'utf8');
    let kb = 0;
    for (const m of text.matchAll(/^Private_(?:Clean|Dirty):\s+(\d+) kB/gm)) kb += Number(m[1]);
    return kb * 1024;
  } catch {
    return undefined;
  }
}

/**
 * Guest events (exits, OOMs) a pod may send in one second. A real pod sends a few per container
 * lifetime; past this the guest is broken or hostile: a protocol error that fails the pod.
 */
export const MAX_GUEST_EVENTS_PER_S = 500;
/**
 * How long the guest's answer to a create the host gave up on is still awaited, so that a late
 * success is undone; a guest silent longer than this leaves the agent's pending entry to expire.
 */
export const ABANDONED_CREATE_WAIT_MS = 10 * 60_000;

/** How long the guest may take to give up or take back RAM, or to online/offline vCPUs. */
const RESIZE_TIMEOUT_MS = 60_000;
/** an image mount without a caller's deadline: the agent's usual bound */
const IMAGE_MOUNT_TIMEOUT_MS = 30_000;

/**
 * How long the guest may wait for a hot-plugged disk to appear and take its mount: what is left
 * of the call's bound, less 2 s so its clear "disk did not appear" answers before the call times
 * out (a disk of a VM starved of CPU can take longer than the agent's default 10 s to scan).
 */
export function guestDiskWaitMs(timeoutMs: number): number {
  return Math.max(1000, Math.floor(timeoutMs) - 2000);
}

export class VmPod implements Pod, PodVolumeTarget {
  agent!: AgentClient;
  private eventHandler: (ev: PodEvent) => void = () => undefined;
  private events = { windowStart: 0, count: 0, flooded: false };

  /**
   * The size the VM runs at: its boot size (the ceiling) until resized. vCPUs beyond it are
   * offline in the guest, RAM beyond it is in the balloon (runtime/resize.ts).
   */
  private current: PodSize;

  /**
   * A restored pod's containers keep the ids the guest knows them by (its RAM came back as it
   * was) while the host gives them new ones: host id → guest id, and back for guest events.
   */
  private readonly toGuest = new Map<string, string>();
  private readonly toHost = new Map<string, string>();

  /**
   * `id` is the sandbox id: it names the pod's volume state, so it must not be the VM's own id
   * (a warm spare VM keeps the name it was started with).
   * `size`: what a resized VM runs at (the sandbox record's), else its boot size.
   */
  constructor(
    readonly vm: Vm,
    readonly sharePath: string,
    private readonly logger: Logger,
    readonly id: string = vm.info.id,
    private readonly agentCalls?: AgentCallObserver,
    size?: PodSize,
  ) {
    this.current = size ?? { vcpus: vm.info.vcpus, memoryMiB: vm.info.memoryMiB };
  }

  /** host container id → guest container id, for containers a checkpoint brought back */
  mapContainerIds(ids: Record<string, string>): void {
    for (const [host, guest] of Object.entries(ids)) {
      this.toGuest.set(host, guest);
      this.toHost.set(guest, host);
    }
  }

  /** the id the guest knows a container by */
  guestId(id: string): string {
    return this.toGuest.get(id) ?? id;
  }

  /** the size a restored VM ran at when it was checkpointed */
  assumeSize(size: PodSize): void {
    this.current = { ...size };
  }

  /**
   * Saves the VM whole into `statePath` (Vm.checkpoint). QEMU refuses to save a VM while its
   * guest holds the 9p share (a migration blocker, dropped when the guest lets the export's
   * root go), so the guest first lets the share go: every container's share mounts and its own
   * (agent share.release); then `remount` mounts the share again and the guest puts each
   * container mount back where it was (share.attach), also when the save fails. A process
   * holding a file on the share pins it: refused before anything changes, naming the container
   * (`names`: host container id → name) and the path.
   */
  async checkpoint(statePath: string, o: { resume: boolean; timeoutMs: number; names?: Record<string, string> }, remount: () => Promise<void>): Promise<{ releasedMs: number }> {
    // what QEMU says before and after the guest lets the share go (logged: the e2e reads it)
    const blockedBefore = await this.vm.checkpointBlockers();
    const t0 = Date.now();
    const r = await this.agent.call('share.release', {}, 30_000);
    if (r.busy?.length) {
      const who = r.busy.map((b) => {
        const host = this.toHost.get(b.container_id) ?? b.container_id;
        const name = o.names?.[host];
        return `${b.container_id ? `container ${name ?? host}` : 'a guest process'} (pid ${b.pid}) holds ${b.path}`;
      });
      throw failedPrecondition(`the pod VM cannot be saved while a process holds a file on the host share (a hostPath, ConfigMap, Secret, projected or disk-backed emptyDir volume, /etc/hosts, a termination log): ${who.join('; ')}`);
    }
    let saved = false;
    let blockedAfter: string[] = [];
    let savedMs = 0;
    try {
      blockedAfter = await this.vm.checkpointBlockers();
      if (blockedAfter.length) throw failedPrecondition(`the pod VM cannot be saved now; the hypervisor says: ${blockedAfter.join('; ')}`);
      const t1 = Date.now();
      await this.vm.checkpoint(statePath, o);
      savedMs = Date.now() - t1;
      saved = true;
    } finally {
      if (o.resume || !saved) {
        await remount();
        await this.agent.call('share.attach', {}, 30_000);
      }
    }
    const releasedMs = Date.now() - t0;
    this.logger.info({ sandbox: this.id, mounts: r.mounts ?? 0, releasedMs, savedMs, blockedBefore, blockedAfter }, 'pod VM saved; its host-share mounts were away meanwhile');
    return { releasedMs };
  }

  /** The restored guest's container share mounts back, from the new share (after setup and the host's binds). */
  async attachShare(): Promise<number> {
    return (await this.agent.call('share.attach', {}, 30_000)).attached;
  }

  get sizing(): { current: PodSize; ceiling: PodSize } {
    return { current: { ...this.current }, ceiling: { vcpus: this.vm.info.vcpus, memoryMiB: this.vm.info.memoryMiB } };
  }

  /**
   * Grows RAM before CPUs and shrinks it after them; a step that fails undoes the one before it,
   * so the VM is at its old size or its new one.
   */
  async resize(target: PodSize): Promise<void> {
    const cur = this.current;
    const cpus = (online: number) => this.agent.call('vm.cpus', { online });
    if (target.memoryMiB > cur.memoryMiB) await this.vm.setMemory(target.memoryMiB, RESIZE_TIMEOUT_MS);
    if (target.vcpus !== cur.vcpus) {
      try {
        await cpus(target.vcpus);
      } catch (err) {
        if (target.memoryMiB > cur.memoryMiB) await this.vm.setMemory(cur.memoryMiB, RESIZE_TIMEOUT_MS).catch(() => undefined);
        throw err;
      }
    }
    if (target.memoryMiB < cur.memoryMiB) {
      try {
        await this.vm.setMemory(target.memoryMiB, RESIZE_TIMEOUT_MS);
      } catch (err) {
        if (target.vcpus !== cur.vcpus) await cpus(cur.vcpus).catch(() => undefined);
        throw err;
      }
    }
    this.current = { ...target };
    this.logger.info({ sandbox: this.id, vcpus: target.vcpus, memoryMiB: target.memoryMiB }, 'pod VM resized');
  }

  get pid(): number {
    return this.vm.info.pid;
  }

  get exited(): Promise<void> {
    return this.vm.exited;
  }

  get volumes(): PodVolumeTarget {
    return this;
  }

  alive(): boolean {
    return this.vm.alive();
  }

  connected(): boolean {
    return !!this.agent && !this.agent.closed;
  }

  describe(): Record<string, unknown> {
    const i = this.vm.info;
    return { backend: 'vm', vm: { pid: i.pid, accelerator: i.accelerator, boot: i.bootMode, spare: i.spare ?? false, vcpus: this.current.vcpus, memoryMiB: this.current.memoryMiB, ceiling: { vcpus: i.vcpus, memoryMiB: i.memoryMiB }, alive: this.vm.alive() } };
  }

  // ---- the volume target (storage/volume-driver.ts): block sources to the VM, mounts to the guest

  attachBlock(tag: string, source: BlockSource, o: { readonly: boolean }): Promise<BlockAttachment> {
    return this.vm.attachBlock(tag, source, o);
  }

  detachBlock(tag: string, scsiId?: number): Promise<void> {
    return this.vm.detachBlock(tag, scsiId);
  }

  sweepBlocks(): Promise<void> {
    return this.vm.sweepBlocks();
  }

  async mountDisk(p: GuestDiskMount, timeoutMs: number): Promise<void> {
    await this.agent.call('disk.mount', { ...p, wait_ms: guestDiskWaitMs(timeoutMs) }, timeoutMs);
  }

  diskDevice(a: BlockAddress, timeoutMs: number): Promise<{ device: string; major: number; minor: number }> {
    return this.agent.call('disk.device', { scsi_id: a.scsiId, lun: a.lun, wait_ms: guestDiskWaitMs(timeoutMs) }, timeoutMs);
  }

  async mountNfs(p: GuestNfsMount, timeoutMs: number): Promise<void> {
    await this.agent.call('nfs.mount', p, timeoutMs);
  }

  async unmount(target: string, timeoutMs: number): Promise<void> {
    await this.agent.call('disk.unmount', { target }, timeoutMs);
  }

  /** Greets the agent with this pod's identity (connecting first), over `agent` when already connected (a spare). */
  async connect(hostname: string, timeoutMs: number, agent?: AgentClient): Promise<{ agent_version: string; boot_id: string }> {
    const deadline = Date.now() + timeoutMs;
    const died = this.vm.exited.then(() => {
      throw new Error('the VM exited during boot; see console.log in its state directory');
    });
    this.agent = agent ?? await Promise.race([this.vm.connectAgent(timeoutMs, this.agentCalls), died]);
    this.agent.on('event', (ev: AgentEvent) => this.onGuestEvent(ev));
    this.agent.on('protocol-error', (err: Error) => this.logger.error({ sandbox: this.vm.info.id, err }, 'agent broke the protocol; closing its connection'));
    const nonce = crypto.randomBytes(16).toString('hex');
    const g = await hello(this.agent, { nonce, hostname, timeoutMs: Math.max(1000, deadline - Date.now()), died });
    return { agent_version: g.agentVersion, boot_id: g.bootId };
  }

  onEvent(handler: (ev: PodEvent) => void): void {
    this.eventHandler = handler;
  }

  /** Passes a guest event on, unless the guest floods: then its connection and VM are ended. */
  private onGuestEvent(ev: AgentEvent): void {
    const e = this.events;
    if (e.flooded) return;
    const now = Date.now();
    if (now - e.windowStart >= 1000) {
      e.windowStart = now;
      e.count = 0;
    }
    if (++e.count > MAX_GUEST_EVENTS_PER_S) {
      e.flooded = true;
      this.logger.error({ sandbox: this.id, limit: MAX_GUEST_EVENTS_PER_S }, 'guest event flood (protocol error): closing the agent connection and stopping the pod VM');
      this.agent.close();
      void this.vm.stop(0).catch(() => undefined);
      return;
    }
    const cid = typeof ev.container_id === 'string' ? this.toHost.get(ev.container_id) : undefined;
    this.eventHandler((cid ? { ...ev, container_id: cid } : ev) as PodEvent);
  }

  async setup(p: SetupParams): Promise<void> {
    await this.agent.call('sandbox.setup', { hostname: p.hostname, dns: p.dns, share_tag: this.vm.shareTag, sysctls: p.sysctls });
  }

  openStream(): PodStream {
    return this.agent.openStream();
  }

  adoptStream(id: number): PodStream {
    return this.agent.adoptStream(id);
  }

  /**
   * The guest's create runs on after the host stops waiting (after `timeoutMs`, the CRI call's
   * deadline): its answer is still awaited, and a container it then reports created is deleted in
   * the guest, since no host record names it and the caller retries with a fresh id.
   */
  async createContainer(p: GuestParams<'container.create'>, timeoutMs: number): Promise<Pick<GuestResult<'container.create'>, 'user'>> {
    const created = this.agent.call('container.create', p, Math.max(timeoutMs, ABANDONED_CREATE_WAIT_MS));
    let timer: NodeJS.Timeout | undefined;
    const gaveUp = new Promise<'gave-up'>((resolve) => (timer = setTimeout(() => resolve('gave-up'), timeoutMs)));
    try {
      const res = await Promise.race([created, gaveUp]);
      if (res !== 'gave-up') return { user: res?.user };
    } finally {
      clearTimeout(timer);
    }
    created.then(
      () => this.deleteAbandoned(p.id),
      (err: Error) => this.logger.info({ sandbox: this.id, container: p.id, err }, 'container create the host gave up on failed in the guest'),
    );
    throw deadlineExceeded(`the guest did not create container ${p.id} within ${timeoutMs} ms (the call's deadline)`);
  }

  private async deleteAbandoned(id: string): Promise<void> {
    try {
      await this.agent.call('container.delete', { id });
      this.logger.warn({ sandbox: this.id, container: id }, 'container create the host gave up on completed in the guest: deleted there');
    } catch (err) {
      this.logger.error({ sandbox: this.id, container: id, err }, 'cannot delete a container create the host gave up on');
    }
  }

  startContainer(id: string, timeoutMs?: number): Promise<{ pid: number }> {
    return this.agent.call('container.start', { id: this.guestId(id) }, timeoutMs);
  }

  async signalContainer(id: string, signal: number, all: boolean): Promise<void> {
    await this.agent.call('container.signal', { id: this.guestId(id), signal, all });
  }

  async deleteContainer(id: string): Promise<void> {
    await this.agent.call('container.delete', { id: this.guestId(id) });
  }

  containerState(id: string): Promise<GuestResult<'container.state'>> {
    return this.agent.call('container.state', { id: this.guestId(id) });
  }

  async updateContainer(id: string, resources: object): Promise<void> {
    await this.agent.call('container.update', { id: this.guestId(id), resources });
  }

  async exec(p: GuestParams<'exec.start'>, timeoutMs?: number): Promise<void> {
    await this.agent.call('exec.start', { ...p, container_id: this.guestId(p.container_id) }, timeoutMs);
  }

  async signalProcess(containerId: string, execId: string | null, signal: number): Promise<void> {
    await this.agent.call('process.signal', { container_id: this.guestId(containerId), exec_id: execId, signal });
  }

  async resizeProcess(containerId: string, execId: string | null, rows: number, cols: number): Promise<void> {
    await this.agent.call('process.resize', { container_id: this.guestId(containerId), exec_id: execId, rows, cols });
  }

  async portForward(port: number, stream: PodStream): Promise<void> {
    await this.agent.call('portforward.connect', { port, stream: stream.id });
  }

  async stats(ids: string[]): Promise<GuestResult<'stats'>> {
    const r = await this.agent.call('stats', { ids: ids.map((id) => this.guestId(id)) }, 5000);
    if (!this.toHost.size || !Array.isArray(r?.containers)) return r;
    const host = (c: unknown) => {
      const id = (c as { id?: unknown })?.id;
      return typeof id === 'string' && this.toHost.has(id) ? { ...(c as object), id: this.toHost.get(id) } : c;
    };
    return { ...r, containers: r.containers.map(host) };
  }

  async hostPrivateBytes(): Promise<number | undefined> {
    return this.vm.alive() ? vmPrivateBytes(this.pid) : undefined;
  }

  /**
   * Attaches an image's erofs file and mounts it read-only in the guest, within `timeoutMs`
   * (the caller's deadline): the guest waits as long for the disk to appear.
   */
  async mountImage(imageId: string, erofsPath: string, timeoutMs = IMAGE_MOUNT_TIMEOUT_MS): Promise<PodImageMount> {
    const target = `${GUEST_IMAGES}/${imageId.replace(/^sha256:/, '')}`;
    const started = Date.now();
    const T = stepTimer(this.logger, 'mountImage', { sandbox: this.id, image: imageId });
    const disk = await this.vm.attachDisk(erofsPath, true);
    T.mark('attach');
    try {
      const left = timeoutMs - (Date.now() - started);
      if (left <= 0) throw deadlineExceeded(`the caller's deadline passed while image ${imageId} was attached to pod ${this.id}`);
      await this.agent.call('disk.mount', { scsi_id: disk.scsiId, lun: disk.lun, fstype: 'erofs', readonly: true, target, options: [], wait_ms: guestDiskWaitMs(left) }, left);
      T.mark('guest-mount');
      T.done();
    } catch (err) {
      await this.vm.detachDisk(disk.nodeName).catch(() => undefined);
      throw err;
    }
    return { nodeName: disk.nodeName, target };
  }

  async unmountImage(m: PodImageMount): Promise<void> {
    if (!this.vm.alive()) return;
    await this.agent.call('disk.unmount', { target: m.target });
    await this.vm.detachDisk(m.nodeName);
  }

  /**
   * Makes host path `src` visible in the share at `rel` by a bind mount inside QEMU's own
   * mount namespace (never the host's). Returns the guest path.
   */
  async bindHostPath(src: string, rel: string, readonly: boolean): Promise<string> {
    const dst = path.join(this.sharePath, rel);
    const st = await fsp.stat(src);
    await fsp.mkdir(path.dirname(dst), { recursive: true });
    if (st.isDirectory()) await fsp.mkdir(dst, { recursive: true });
    else await fsp.writeFile(dst, '', { flag: 'a' });
    await this.vm.bindIntoMountNs(src, dst, readonly);
    return path.posix.join(GUEST_SHARE, rel);
  }

  /** A tmpfs in guest memory (agent tmpfs.mount), once per pod; the path is ours to know, not the guest's to say. */
  async memoryVolume(v: MemoryVolumeSpec): Promise<string> {
    await this.agent.call('tmpfs.mount', { name: v.name, size: v.sizeBytes, mode: v.mode, uid: v.uid, gid: v.gid });
    return path.posix.join(GUEST_TMPFS, v.name);
  }

  /** Undoes bindHostPath for everything under `rel` and removes the mount points. */
  async unbindHostPaths(rel: string): Promise<void> {
    const dst = path.join(this.sharePath, rel);
    if (this.vm.alive()) await run('nsenter', ['-t', String(this.pid), '-m', '--', 'umount', '-R', '-l', dst]).catch(() => undefined);
    await fsp.rm(dst, { recursive: true, force: true });
  }

  /**
   * Powers the VM off: agent shutdown (the guest kills its processes, unmounts and syncs), then
   * the hypervisor's quit, then SIGKILL. With `discard` the guest is not asked: nothing in it
   * outlives the VM (rootfs overlays are guest memory, images read-only, the 9p share uncached,
   * volumes detached, container logs drained when they exited), so the hypervisor quits at once.
   * Under TCG the guest's power-off path is code no pod ran before: ~0.3 s of translation.
   */
  async stop(graceMs: number, o: { discard?: boolean } = {}): Promise<void> {
    if (!o.discard && this.vm.alive() && this.agent && !this.agent.closed) {
      await Promise.race([
        this.agent.call('shutdown', {}, graceMs).catch(() => undefined),
        this.vm.exited,
      ]);
      await Promise.race([this.vm.exited, new Promise((r) => setTimeout(r, Math.min(graceMs, 2000)))]);
    }
    await this.vm.stop(graceMs);
    this.agent?.close();
  }
}
