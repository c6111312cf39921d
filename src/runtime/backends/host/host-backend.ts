// The host pod backend: a pod is a set of namespaces pinned on the host (pinned-ns.ts; the
// host's own where the pod asks for them: network, PID, IPC), its containers run on the host,
// each held by a shim (podvisor-launch shim: youki's libcontainer in process) that outlives the
// daemon. No pause container, no VM: such pods have container isolation only (README "Host
// pods"). Pods with host network get no CNI; other host pods (the runc/host handlers) get CNI in
// their pinned netns (a veth, no tap). Everything it makes lives under <state>/host and
// <root>/host and is named by the sandbox record or an owner file, so a restarted daemon finds
// it again or takes it down (reapStrays).
import type { PodSandboxConfig } from '../../../../cri-api/messages';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Config } from '../../../config/config';
import type { Logger } from '../../../util/log';
import type { NetworkDriver } from '../../../../network/network-driver';
import { cgroupParentPath } from '../../pod-cgroup';
import { networkRequest, podDns, podHostname } from '../../pod-config';
import type { BackendFeatures, PodBackend, PodEvent } from '../../pod-backend';
import type { HostPodState, SandboxRecord } from '../../records';
import { HostContainers } from './host-containers';
import { hostDevices } from './host-devices';
import { HostPod } from './host-pod';
import { ensureSharedDir, isMountPoint, releaseSharedDir } from './mount';
import { checkSysctls, initAlive, pin, unpin } from './pinned-ns';
import { HostRootfs } from './rootfs';

/** The pod's /dev/shm size (as containerd's default). */
const SHM_BYTES = 64 << 20;

export interface HostPodBackendOptions {
  cfg: Config;
  /** podvisor-launch (pinns, shim, connect, delete) */
  launcher: string;
  network: NetworkDriver;
  logger: Logger;
}

/** The daemon's own hard open-files limit, which its containers may not exceed (HostTarget.nofile). */
function ownNofile(): number {
  try {
    const m = /^Max open files\s+\S+\s+(\S+)/m.exec(fs.readFileSync('/proc/self/limits', 'utf8'));
    return m && /^\d+$/.test(m[1]) ? Number(m[1]) : 1048576;
  } catch {
    return 1024;
  }
}

function nsModes(config: PodSandboxConfig): { net: boolean; ipc: boolean; pid: string } {
  const o = config.linux?.security_context?.namespace_options ?? {};
  return { net: o.network === 'NODE', ipc: o.ipc === 'NODE', pid: typeof o.pid === 'string' ? o.pid : 'POD' };
}

export class HostPodBackend implements PodBackend {
  readonly kind = 'host';
  /**
   * recursive read-only mounts: OCI "rro", which libcontainer sets with mount_setattr(2)
   * (MOUNT_ATTR_RDONLY, AT_RECURSIVE) on the bind before it is attached; it mounts every bind
   * that way (open_tree, mount_setattr, move_mount), so no kernel runs host containers without it
   */
  readonly features: BackendFeatures = { recursiveReadOnlyMounts: true, userNamespaces: false, supplementalGroupsPolicy: false };
  private readonly stateDir: string;
  private readonly rootDir: string;
  private readonly containers: HostContainers;
  private prepared?: Promise<void>;
  /** starts under way (the state dir's mount is not released under them) */
  private starting = 0;
  private devices?: Promise<Awaited<ReturnType<typeof hostDevices>>>;

  constructor(private readonly o: HostPodBackendOptions) {
    this.stateDir = path.join(o.cfg.state, 'host');
    this.rootDir = path.join(o.cfg.root, 'host');
    const rootfs = new HostRootfs(this.stateDir, this.rootDir, o.logger);
    this.containers = new HostContainers(o.launcher, rootfs, path.join(this.stateDir, 'oci'), o.logger);
  }

  private podDir(id: string): string {
    return path.join(this.stateDir, 'pods', id.slice(0, 16));
  }

  /** The state dir is a shared mount: what is unmounted here is unmounted in containers' copies too. */
  private prepare(): Promise<void> {
    this.prepared ??= (async () => {
      await ensureSharedDir(this.stateDir);
      await fsp.mkdir(path.join(this.rootDir, 'containers'), { recursive: true, mode: 0o700 });
    })().catch((err) => {
      this.prepared = undefined;
      throw err;
    });
    return this.prepared;
  }

  private pod(rec: SandboxRecord, onEvent: (ev: PodEvent) => void): HostPod {
    const pod = new HostPod(rec, {
      containers: this.containers,
      cgroupDriver: this.o.cfg.cgroupDriver,
      hostDevices: () => (this.devices ??= hostDevices()),
      nofile: ownNofile(),
      logger: this.o.logger,
    });
    pod.onEvent(onEvent);
    return pod;
  }

  async readiness(): Promise<string | undefined> {
    if (process.getuid?.() !== 0) return 'host pods need podvisor to run as root';
    if (!fs.existsSync(this.o.launcher)) return `podvisor-launch not found at ${this.o.launcher}`;
    return undefined;
  }

  admit(config: PodSandboxConfig): void {
    const m = nsModes(config);
    // a host pod sets sysctls only in namespaces of its own, never the host's
    checkSysctls(config.linux?.sysctls ?? {}, { net: !m.net, ipc: !m.ipc, uts: !m.net });
    if (config.linux?.cgroup_parent) cgroupParentPath(config.linux.cgroup_parent, this.o.cfg.cgroupDriver);
  }

  async start(rec: SandboxRecord, onEvent: (ev: PodEvent) => void): Promise<HostPod> {
    this.starting++;
    try {
      return await this.startPod(rec, onEvent);
    } finally {
      this.starting--;
    }
  }

  private async startPod(rec: SandboxRecord, onEvent: (ev: PodEvent) => void): Promise<HostPod> {
    await this.prepare();
    const c = rec.config;
    const m = nsModes(c);
    const dir = this.podDir(rec.id);
    try {
      const ns = await pin(this.o.launcher, {
        dir, net: !m.net, ipc: !m.ipc, hostname: m.net ? undefined : podHostname(c),
        sysctls: c.linux?.sysctls ?? {}, shmBytes: m.ipc ? undefined : SHM_BYTES, pid: m.pid === 'POD',
      });
      rec.host = { dir, ns };
      // a crash from here on: the pod directory says what to undo (reapStrays, undoStart)
      await fsp.writeFile(path.join(dir, 'pod.json'), JSON.stringify({ sandbox: rec.id, ns }), { mode: 0o600 });
      await this.writeEtc(dir, c, m.net);
      if (!m.net) {
        const net = this.o.network.ready();
        if (net.ready) rec.network = await this.o.network.setUp(networkRequest(rec), { netns: ns.net });
        else this.o.logger.warn({ sandbox: rec.id, why: net.message }, 'no pod network configured: the pod gets loopback only');
      }
      return this.pod(rec, onEvent);
    } catch (err) {
      await this.release(rec).catch((e) => this.o.logger.error({ sandbox: rec.id, err: e }, 'network teardown after a failed start'));
      await this.unpinDir(dir, rec.host).catch((e) => this.o.logger.error({ sandbox: rec.id, err: e }, 'unpinning after a failed start'));
      rec.host = undefined;
      throw err;
    }
  }

  /** resolv.conf (the pod's DNS, or the host's for a host-network pod without one) and hostname. */
  private async writeEtc(dir: string, config: PodSandboxConfig, hostNet: boolean): Promise<void> {
    const dns = podDns(config);
    let resolv: string | undefined;
    if (dns) {
      resolv = [...dns.servers.map((s) => `nameserver ${s}`), ...(dns.searches.length ? [`search ${dns.searches.join(' ')}`] : []), ...(dns.options.length ? [`options ${dns.options.join(' ')}`] : [])].join('\n') + '\n';
    } else if (hostNet) {
      resolv = await fsp.readFile('/etc/resolv.conf', 'utf8').catch(() => undefined);
    }
    if (resolv !== undefined) await fsp.writeFile(path.join(dir, 'resolv.conf'), resolv, { mode: 0o644 });
    await fsp.writeFile(path.join(dir, 'hostname'), `${hostNet ? os.hostname() : podHostname(config)}\n`, { mode: 0o644 });
  }

  private async unpinDir(dir: string, host: HostPodState | undefined): Promise<void> {
    let ns = host?.ns;
    if (!ns) {
      try {
        ns = JSON.parse(await fsp.readFile(path.join(dir, 'pod.json'), 'utf8')).ns;
      } catch {
        /* pinned before it was written, or never */
      }
    }
    await unpin(dir, ns);
  }

  async reconnect(rec: SandboxRecord, onEvent: (ev: PodEvent) => void): Promise<HostPod | undefined> {
    if (!rec.host) return undefined;
    await this.prepare();
    const { dir, ns } = rec.host;
    const pinned = [ns.net, ns.ipc, ns.uts].filter((f): f is string => !!f);
    if (!fs.existsSync(dir) || pinned.some((f) => !isMountPoint(f)) || (ns.init && !initAlive(ns.init))) {
      this.o.logger.warn({ sandbox: rec.id }, 'host pod namespaces are gone after restart');
      return undefined;
    }
    // the images its containers use are counted (mounted again if they are not)
    for (const [id, m] of Object.entries(rec.images)) await this.containers.rootfs.adoptImage({ id, erofsPath: m.nodeName });
    this.o.logger.info({ sandbox: rec.id }, 'reconnected to host pod');
    return this.pod(rec, onEvent);
  }

  async release(rec: SandboxRecord): Promise<void> {
    if (!rec.network) return;
    await this.o.network.tearDown(networkRequest(rec), rec.network);
    rec.network = null;
  }

  /** The pod's containers (whatever is left of them) and its pinned namespaces. */
  async remove(rec: SandboxRecord): Promise<void> {
    for (const id of await this.containers.of(rec.id)) await this.containers.destroy(id);
    await this.unpinDir(this.podDir(rec.id), rec.host);
  }

  async undoStart(rec: SandboxRecord): Promise<void> {
    await this.o.network.tearDown(networkRequest(rec), rec.network ?? null);
    await this.remove(rec);
  }

  async dropHostPaths(): Promise<void> {
    /* host pods bind nothing outside their containers */
  }

  /**
   * Takes down the containers and pods no record knows (their records were removed while the
   * daemon was down, or a crash cut a create short), then every image mount, overlay and
   * writable layer that nothing holds any more.
   */
  async reapStrays(known: Set<string>): Promise<void> {
    if (!fs.existsSync(this.stateDir)) return;
    await this.prepare();
    const keep = new Set<string>();
    for (const c of await this.containers.all()) {
      if (c.owner && known.has(c.owner.sandbox)) {
        keep.add(c.owner.container);
        continue;
      }
      this.o.logger.warn({ container: c.owner?.container ?? c.name }, 'taking down a host container without a pod');
      if (c.owner) await this.containers.destroy(c.owner.container).catch((err) => this.o.logger.error({ container: c.owner!.container, err: err }, 'cannot take a stray host container down'));
    }
    const knownDirs = new Set([...known].map((id) => path.basename(this.podDir(id))));
    for (const name of await fsp.readdir(path.join(this.stateDir, 'pods')).catch(() => [] as string[])) {
      if (knownDirs.has(name)) continue;
      this.o.logger.warn({ pod: name }, 'unpinning a host pod without a record');
      await this.unpinDir(path.join(this.stateDir, 'pods', name), undefined).catch((err) => this.o.logger.error({ pod: name, err: err }, 'cannot unpin a stray host pod'));
    }
    await this.containers.rootfs.sweep(keep);
    await this.releaseIdle(); // nothing left: not even the state dir stays mounted
  }

  /** The daemon stops: the state dir's shared mount goes unless pods (or their images) are mounted under it. */
  async close(): Promise<void> {
    await this.releaseIdle();
  }

  /**
   * Unmounts the state dir's own shared mount when nothing is mounted under it (no pod, no
   * image, no container root), so a stopped daemon leaves nothing mounted that no pod needs;
   * the next start makes it again (prepare).
   */
  private async releaseIdle(): Promise<void> {
    if (this.starting || !fs.existsSync(this.stateDir)) return;
    await this.prepared?.catch(() => undefined);
    if (this.starting) return;
    if (await releaseSharedDir(this.stateDir)) {
      this.prepared = undefined;
      this.o.logger.debug({ dir: this.stateDir }, 'host pod state dir unmounted: no host pod left');
    }
  }
}
