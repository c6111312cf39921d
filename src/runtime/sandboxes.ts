// Pod sandboxes: each one is a VM. Run boots it and handshakes with its agent; stop powers it
// off (after its containers); remove forgets it. Records are durable, and a restarted daemon
// reconnects to the VMs that are still running.
import crypto from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { failedPrecondition, internal, invalidArgument, notFound, unavailable } from '../util/errors';
import type { Logger } from '../util/log';
import { RecordStore } from '../store/record-store';
import { findByIdOrPrefix } from '../util/lookup';
import type { Config } from '../config/config';
import type { Hypervisor, Vm } from '../vm/hypervisor';
import type { Spare, SparePool } from '../vm/spares';
import type { NetworkDriver, PodNetwork, PodNetworkRequest } from '../../network/network-driver';
import type { VolumeManager } from '../../storage/volume-manager';
import { KeyedMutex } from '../util/keyed-mutex';
import { cgroupParentPath, enterPodCgroup, removeCgroups } from './pod-cgroup';
import { PodVm } from './pod-vm';
import { labelsMatch, SandboxRecord } from './records';
import { nowNs } from './container-log';

export interface Sandbox {
  rec: SandboxRecord;
  pod: PodVm | undefined;
}

/** Hooks the container side gives us (kept as callbacks to avoid a dependency cycle). */
export interface ContainerHooks {
  /** stops every container of the sandbox (the VM is about to go) */
  stopAll(sandboxId: string): Promise<void>;
  /** the VM is gone: mark its containers exited */
  vmGone(sandboxId: string): Promise<void>;
  /** removes every container of the sandbox */
  removeAll(sandboxId: string): Promise<void>;
  /** routes an agent event of this sandbox */
  onEvent(sandboxId: string, ev: any): void;
  /** after a reconnect: re-adopt stdio streams and reconcile container states */
  reattach(sandboxId: string): Promise<void>;
}

export function vmSize(config: any, vm: Config['vm']): { vcpus: number; memoryMiB: number } {
  const r = config?.linux?.resources ?? {};
  const quota = Number(r.cpu_quota ?? 0);
  const period = Number(r.cpu_period ?? 0) || 100_000;
  const cpus = quota > 0 ? Math.ceil(quota / period) : 0;
  const memMiB = Math.ceil(Number(r.memory_limit_in_bytes ?? 0) / (1024 * 1024));
  return {
    vcpus: Math.min(vm.maxVcpus, Math.max(vm.defaultVcpus, cpus)),
    memoryMiB: Math.min(vm.maxMemoryMiB, Math.max(vm.defaultMemoryMiB, memMiB)),
  };
}

/** The sandbox's hostname, or one derived from the pod name that the kernel accepts (≤ 63). */
export function podHostname(config: any): string {
  if (config.hostname) return config.hostname;
  const name = String(config.metadata?.name ?? 'pod').toLowerCase().replace(/[^a-z0-9-]+/g, '-').slice(0, 63).replace(/^-+|-+$/g, '');
  return name || 'pod';
}

function networkRequest(rec: SandboxRecord): PodNetworkRequest {
  const c = rec.config;
  return {
    sandboxId: rec.id,
    name: c.metadata.name,
    namespace: c.metadata.namespace,
    uid: c.metadata.uid,
    portMappings: c.port_mappings ?? [],
    annotations: c.annotations ?? {},
    dns: c.dns_config ? { servers: c.dns_config.servers ?? [], searches: c.dns_config.searches ?? [], options: c.dns_config.options ?? [] } : undefined,
  };
}

export class SandboxManager {
  readonly sandboxes = new Map<string, Sandbox>();
  readonly lock = new KeyedMutex();
  private readonly store: RecordStore<SandboxRecord>;
  hooks!: ContainerHooks;

  /** warm spare VMs, when templates are on (set by the daemon) */
  spares?: SparePool;

  constructor(
    private readonly cfg: Config,
    private readonly hv: Hypervisor,
    private readonly network: NetworkDriver,
    private readonly volumes: VolumeManager,
    private readonly logger: Logger,
  ) {
    this.store = new RecordStore(path.join(cfg.root, 'sandboxes'));
  }

  /** A sandbox's runtime directory. Short (id prefix): unix socket paths must fit 108 bytes. */
  dir(id: string): string {
    return path.join(this.cfg.state, 'vm', id.slice(0, 16));
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

  async run(config: any, runtimeHandler: string): Promise<string> {
    const md = config?.metadata;
    if (!md?.name || !md?.namespace || !md?.uid) throw invalidArgument('sandbox config metadata needs name, namespace and uid');
    const nsOpts = config.linux?.security_context?.namespace_options ?? {};
    if (nsOpts.network === 'NODE') {
      throw failedPrecondition('podvisor runs every pod in its own VM: host network (NamespaceMode NODE) is not available without a host runtime handler');
    }
    if (nsOpts.pid === 'NODE' || nsOpts.ipc === 'NODE') throw failedPrecondition('podvisor runs every pod in its own VM: host PID/IPC namespaces are not available');
    if (runtimeHandler && !['podvisor', 'kata', 'vm'].includes(runtimeHandler)) throw notFound(`runtime handler ${JSON.stringify(runtimeHandler)} is not known to podvisor`);
    if (config.linux?.cgroup_parent) cgroupParentPath(config.linux.cgroup_parent, this.cfg.cgroupDriver);
    for (const sb of this.sandboxes.values()) {
      const m = sb.rec.config.metadata;
      if (m.name === md.name && m.namespace === md.namespace && m.uid === md.uid && (m.attempt ?? 0) === (md.attempt ?? 0)) {
        throw invalidArgument(`a sandbox for ${md.namespace}/${md.name} attempt ${md.attempt ?? 0} already exists: ${sb.rec.id}`);
      }
    }
    const notReady = await this.hv.readiness();
    if (notReady) throw unavailable(`runtime not ready: ${notReady}`);

    const id = crypto.randomBytes(32).toString('hex');
    const rec: SandboxRecord = {
      id,
      config,
      runtimeHandler: runtimeHandler || '',
      createdAt: nowNs().toString(),
      state: 'SANDBOX_NOTREADY',
      vm: null,
      images: {},
      agentVersion: '',
      network: null,
    };
    const sb: Sandbox = { rec, pod: undefined };
    return this.lock.run(id, async () => {
      this.sandboxes.set(id, sb);
      try {
        await this.boot(sb);
        rec.state = 'SANDBOX_READY';
        await this.save(sb);
        this.logger.info({ sandbox: id, pod: `${md.namespace}/${md.name}`, accel: rec.vm?.accelerator, boot: rec.vm?.bootMode, spare: rec.vm?.spare ?? false }, 'pod sandbox ready');
        return id;
      } catch (err) {
        this.logger.error({ sandbox: id, err: (err as Error).message }, 'pod sandbox failed to start');
        await sb.pod?.stop(1000).catch(() => undefined);
        await this.leaveCgroup(sb).catch((e) => this.logger.error({ sandbox: id, err: e.message }, 'cgroup removal after a failed start'));
        await this.tearDownNetwork(sb).catch((e) => this.logger.error({ sandbox: id, err: e.message }, 'network teardown after a failed start'));
        this.sandboxes.delete(id);
        await this.store.delete(id).catch(() => undefined);
        await fsp.rm(this.dir(id), { recursive: true, force: true });
        throw unavailable(`cannot start pod VM: ${(err as Error).message}`);
      }
    });
  }

  private async boot(sb: Sandbox): Promise<void> {
    const id = sb.rec.id;
    const size = vmSize(sb.rec.config, this.cfg.vm);
    const networked = this.network.ready().ready;
    if (!networked) this.logger.warn({ sandbox: id, why: this.network.ready().message }, 'no pod network configured: the pod gets loopback only');
    const cls = { ...size, nics: networked ? 1 : 0 };
    try {
      await this.bootVm(sb, size, this.spares?.take(cls), networked);
    } finally {
      void this.spares?.fill(cls); // the next pod's spare, made once this pod no longer needs the CPU
    }
  }

  private async bootVm(sb: Sandbox, size: { vcpus: number; memoryMiB: number }, spare: Spare | undefined, networked: boolean): Promise<void> {
    const { id, config } = sb.rec;
    const dir = this.dir(id);
    if (spare) {
      try {
        return await this.bootSpare(sb, spare, networked);
      } catch (err) {
        // not the pod's fault (e.g. CNI gave two interfaces, the spare has one NIC): start over
        this.logger.warn({ sandbox: id, spare: spare.name, err: (err as Error).message }, 'taking a spare VM failed: starting a fresh clone');
        sb.pod = undefined;
        if (spare.vm.alive()) await spare.vm.stop(0).catch(() => undefined);
        await this.leaveCgroup(sb);
        await this.spares!.discard(spare);
        await this.tearDownNetwork(sb);
        await fsp.rm(dir, { recursive: true, force: true });
      }
    }
    const share = path.join(dir, 'shared');
    await fsp.mkdir(share, { recursive: true, mode: 0o700 });
    if (networked) sb.rec.network = await this.network.setUp(networkRequest(sb.rec));
    const net = sb.rec.network;
    const vm = await this.hv.start({ id, dir, sharePath: share, ...size, network: net ? { netnsPath: net.netnsPath, nics: net.nics } : undefined });
    const pod = this.attach(sb, vm);
    await pod.connect(podHostname(config), this.cfg.vm.bootTimeoutS * 1000).then((hello) => { sb.rec.agentVersion = hello.agent_version; });
    await this.enterCgroup(sb, vm);
    await this.setUpGuest(sb, pod);
    await this.configureGuestNetwork(pod, sb.rec.network);
  }

  /**
   * A spare is already running: it moves into the pod's directory, then the pod's network (CNI
   * ADD, the spare's taps moved into the pod netns) and the guest's new identity and settings
   * (hello, then hostname, DNS, sysctls) are done at the same time; the guest learns its
   * addresses last.
   */
  private async bootSpare(sb: Sandbox, spare: Spare, networked: boolean): Promise<void> {
    const { id, config } = sb.rec;
    await fsp.mkdir(path.dirname(this.dir(id)), { recursive: true });
    await this.spares!.moveTo(spare, this.dir(id));
    const pod = this.attach(sb, spare.vm);
    await this.enterCgroup(sb, spare.vm);
    const t0 = Date.now();
    const ms: Record<string, number> = {};
    const guest = pod.connect(podHostname(config), this.cfg.vm.bootTimeoutS * 1000, spare.agent).then(async (hello) => {
      sb.rec.agentVersion = hello.agent_version;
      ms.hello = Date.now() - t0;
      await this.setUpGuest(sb, pod);
      ms.setup = Date.now() - t0;
    });
    guest.catch(() => undefined); // observed below
    // the guest learns its addresses (after its new identity) while the host wires the taps
    const whileWiring = async (net: PodNetwork) => {
      if (net.nics.length !== spare.size.nics) throw new Error(`the pod network has ${net.nics.length} interfaces, the spare VM ${spare.size.nics}`);
      ms.network = Date.now() - t0;
      await guest;
      await this.configureGuestNetwork(pod, net);
      ms.configured = Date.now() - t0;
    };
    const adopt = spare.netns ? { netns: spare.netns, taps: spare.taps } : undefined;
    const network = networked
      ? this.network.setUp(networkRequest(sb.rec), { adopt, whileWiring }).then((net) => { sb.rec.network = net; })
      : Promise.resolve();
    const [n, g] = await Promise.allSettled([network, guest]);
    if (n.status === 'rejected') throw n.reason;
    if (g.status === 'rejected') throw g.reason;
    sb.rec.vm!.spare = true;
    ms.wired = Date.now() - t0;
    this.logger.debug({ sandbox: id, spare: spare.name, ms }, 'spare VM taken');
  }

  private attach(sb: Sandbox, vm: Vm): PodVm {
    sb.rec.vm = vm.info;
    const pod = new PodVm(vm, path.join(this.dir(sb.rec.id), 'shared'), this.logger, sb.rec.id);
    sb.pod = pod;
    pod.onEvent((ev) => this.hooks.onEvent(sb.rec.id, ev));
    this.watchExit(sb, pod);
    return pod;
  }

  /**
   * The VM joins a cgroup of its own under the pod's cgroup_parent (kubelet's pod cgroup) once
   * it is up: what booting it (or keeping it as a spare) touched stays charged where that ran,
   * the podvisor service, so the pod is charged what it costs from then on, which the
   * RuntimeClass overhead covers (an idle pod's private memory), not a cold boot's peak.
   */
  private async enterCgroup(sb: Sandbox, vm: Vm): Promise<void> {
    const parent = sb.rec.config.linux?.cgroup_parent;
    if (!parent) return;
    // recorded with the pod once it is ready (a failed start removes them itself)
    sb.rec.cgroups = await enterPodCgroup(parent, this.cfg.cgroupDriver, sb.rec.id, vm.info.pid);
  }

  /** Removes the VM's cgroups; the VM must be gone. */
  private async leaveCgroup(sb: Sandbox): Promise<void> {
    if (!sb.rec.cgroups?.length) return;
    await removeCgroups(sb.rec.cgroups);
    sb.rec.cgroups = undefined;
  }

  /** Hostname, DNS, sysctls, the share. */
  private async setUpGuest(sb: Sandbox, pod: PodVm): Promise<void> {
    const { config } = sb.rec;
    const dns = config.dns_config
      ? { servers: config.dns_config.servers ?? [], searches: config.dns_config.searches ?? [], options: config.dns_config.options ?? [] }
      : null;
    await pod.setup({ hostname: podHostname(config), dns, sysctls: config.linux?.sysctls ?? {} });
  }

  /** The pod's addresses and routes, once its network is set up. */
  private async configureGuestNetwork(pod: PodVm, net: PodNetwork | null): Promise<void> {
    if (net) await pod.agent.call('network.configure', { interfaces: net.interfaces, routes: net.routes });
  }

  private async tearDownNetwork(sb: Sandbox): Promise<void> {
    if (!sb.rec.network) return;
    await this.network.tearDown(networkRequest(sb.rec), sb.rec.network);
    sb.rec.network = null;
  }

  private watchExit(sb: Sandbox, pod: PodVm): void {
    pod.vm.exited.then(async () => {
      if (sb.pod !== pod) return;
      this.logger.warn({ sandbox: sb.rec.id }, 'pod VM exited');
      await this.lock.run(sb.rec.id, async () => {
        if (!this.sandboxes.has(sb.rec.id)) return;
        sb.rec.state = 'SANDBOX_NOTREADY';
        await this.hooks.vmGone(sb.rec.id);
        await this.save(sb).catch(() => undefined);
      });
    });
  }

  async stop(id: string): Promise<void> {
    const sb = this.find(id);
    if (!sb) return; // CRI: stopping an unknown sandbox is not an error
    await this.hooks.stopAll(sb.rec.id);
    await this.lock.run(sb.rec.id, async () => {
      // volumes first: the guest unmounts and flushes before its disks go
      if (sb.pod) await this.volumes.detachAll(sb.pod).catch((err) => this.logger.warn({ sandbox: sb.rec.id, err: (err as Error).message }, 'volume detach failed'));
      if (sb.pod) await sb.pod.stop(this.cfg.vm.stopTimeoutS * 1000);
      sb.rec.state = 'SANDBOX_NOTREADY';
      await this.hooks.vmGone(sb.rec.id);
      sb.rec.images = {};
      await this.tearDownNetwork(sb);
      await this.save(sb);
    });
  }

  async remove(id: string): Promise<void> {
    const sb = this.find(id);
    if (!sb) return;
    await this.stop(sb.rec.id);
    await this.hooks.removeAll(sb.rec.id);
    await this.lock.run(sb.rec.id, async () => {
      if (sb.pod) await this.volumes.detachAll(sb.pod).catch(() => undefined); // VM gone: only forgets state
      await this.leaveCgroup(sb).catch((err) => {
        throw internal(`remove pod sandbox ${sb.rec.id}: ${(err as Error).message}`);
      });
      this.sandboxes.delete(sb.rec.id);
      await this.store.delete(sb.rec.id);
      await fsp.rm(this.dir(sb.rec.id), { recursive: true, force: true });
      this.logger.info({ sandbox: sb.rec.id }, 'pod sandbox removed');
    });
  }

  list(filter: any): SandboxRecord[] {
    return [...this.sandboxes.values()]
      .map((s) => s.rec)
      .filter((r) => !filter?.id || r.id === filter.id || r.id.startsWith(filter.id))
      .filter((r) => !filter?.state || r.state === filter.state.state)
      .filter((r) => labelsMatch(r.config.labels, filter?.label_selector));
  }

  /** Loads records and reconnects to VMs that survived a daemon restart; reaps the rest. */
  async restore(): Promise<void> {
    const { records, broken } = await this.store.loadAll();
    for (const b of broken) this.logger.error({ file: b }, 'unreadable sandbox record skipped');
    for (const rec of records) {
      const sb: Sandbox = { rec, pod: undefined };
      this.sandboxes.set(rec.id, sb);
      if (rec.state !== 'SANDBOX_READY' || !rec.vm) continue;
      const vm = await this.hv.reconnect(rec.vm);
      if (!vm) {
        this.logger.warn({ sandbox: rec.id }, 'pod VM is gone after restart');
        rec.state = 'SANDBOX_NOTREADY';
        rec.images = {};
        await this.hooks.vmGone(rec.id);
        await this.save(sb);
        continue;
      }
      vm.reserveScsiIds(await this.volumes.scsiIds(rec.id));
      const pod = new PodVm(vm, path.join(this.dir(rec.id), 'shared'), this.logger, rec.id);
      sb.pod = pod;
      pod.onEvent((ev) => this.hooks.onEvent(rec.id, ev));
      this.watchExit(sb, pod);
      try {
        await pod.connect(podHostname(rec.config), 10_000);
        this.logger.info({ sandbox: rec.id, pid: vm.info.pid }, 'reconnected to pod VM');
        await this.hooks.reattach(rec.id);
      } catch (err) {
        this.logger.error({ sandbox: rec.id, err: (err as Error).message }, 'pod VM does not answer after restart; stopping it');
        await pod.stop(2000);
        rec.state = 'SANDBOX_NOTREADY';
        rec.images = {};
        await this.hooks.vmGone(rec.id);
        await this.save(sb);
      }
    }
    await this.reapStrays();
  }

  /** Kills podvisor VMs that no record knows about (their records were removed). */
  private async reapStrays(): Promise<void> {
    const dir = path.join(this.cfg.state, 'vm');
    let names: string[] = [];
    try {
      names = await fsp.readdir(dir);
    } catch {
      return;
    }
    const known = new Set([...this.sandboxes.keys()].map((id) => path.basename(this.dir(id))));
    for (const name of names) {
      if (known.has(name)) continue;
      const pid = await this.hv.reapStray(path.join(dir, name)).catch(() => undefined);
      if (pid) this.logger.warn({ sandbox: name, pid }, 'reaped a VM without a record');
      await fsp.rm(path.join(dir, name), { recursive: true, force: true });
    }
  }
}
