// The VM pod backend: a pod is one VM (cold boot, template clone or an adopted warm spare), its
// agent greeted with the pod's identity, its CNI network wired to the VM's NICs, and the VM in
// a cgroup under the pod's cgroup_parent. Everything the pod holds outside the VM (network,
// cgroups, runtime directory) is recorded in the sandbox record so that a restarted daemon, or a
// failed start, can take it down again.
import type { PodSandboxConfig } from '../../../../cri-api/messages';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { AgentCallObserver } from '../../../agent/client';
import type { Config } from '../../../config/config';
import type { Logger } from '../../../util/log';
import { failedPrecondition } from '../../../util/errors';
import { SHARE_DIR_MODE, type DiskAttachment, type Hypervisor, type Vm } from '../../../vm/hypervisor';
import type { Spare, SparePool } from '../../../vm/spares';
import type { SizeClass } from '../../../vm/templates';
import type { NetworkDriver, PodNetwork } from '../../../../network/network-driver';
import type { VolumeManager } from '../../../../storage/volume-manager';
import { cgroupParentPath, enterPodCgroup, podCgroupDirs, removeCgroups } from '../../pod-cgroup';
import { faultPoint } from '../../../util/fault';
import { podUserNamespace } from '../../userns';
import { bootSize, podSize, type PodSize } from '../../resize';
import type { BackendFeatures, Pod, PodBackend, PodCheckpointState, PodEvent, PodRestoreSource } from '../../pod-backend';
import { CHECKPOINT_TIMEOUT_MS, VM_STATE_FILE, vmCheckpointHost, vmState, type VmCheckpointState } from './vm-checkpoint';
import type { SandboxRecord } from '../../records';
import { VmPod } from './vm-pod';
import { networkRequest, podDns, podHostname } from '../../pod-config';

/** The VM size a pod's resources ask for (runtime/resize.ts). */
export function vmSize(config: PodSandboxConfig, vm: Config['vm']): PodSize {
  return podSize(config?.linux?.resources, vm);
}

export interface VmPodBackendOptions {
  cfg: Config;
  hypervisor: Hypervisor;
  network: NetworkDriver;
  /** warm spare VMs, when templates are on */
  spares?: SparePool;
  /** the volumes attached to pod VMs (their SCSI ids are reserved again on reconnect) */
  volumes: Pick<VolumeManager, 'scsiIds'>;
  logger: Logger;
  /** told of every guest API call of the pods' agents */
  agentCalls?: AgentCallObserver;
}

export class VmPodBackend implements PodBackend {
  readonly kind = 'vm';
  /**
   * read-only mounts are made recursive in the guest (containers' mounts there); user
   * namespaces with the image idmapped in the guest; groups resolved by the agent per policy
   */
  readonly features: BackendFeatures = { recursiveReadOnlyMounts: true, userNamespaces: true, supplementalGroupsPolicy: true };

  /** the size class whose spare a pod's start put off (afterStart makes it), by sandbox id */
  private readonly spareAfterStart = new Map<string, SizeClass>();

  constructor(private readonly o: VmPodBackendOptions) {}

  /** A sandbox's runtime directory. Short (id prefix): unix socket paths must fit 108 bytes. */
  dir(id: string): string {
    return path.join(this.o.cfg.state, 'vm', id.slice(0, 16));
  }

  readiness(): Promise<string | undefined> {
    return this.o.hypervisor.readiness();
  }

  /** A warm spare taken, a template cloned, or a cold boot. */
  startPath(rec: SandboxRecord): string {
    return rec.vm?.spare ? 'spare' : rec.vm?.bootMode ?? 'cold';
  }

  admit(config: PodSandboxConfig): void {
    const nsOpts = config.linux?.security_context?.namespace_options ?? {};
    if (nsOpts.network === 'NODE') {
      throw failedPrecondition('podvisor runs every pod in its own VM: host network (NamespaceMode NODE) is not available without a host runtime handler');
    }
    if (nsOpts.pid === 'NODE' || nsOpts.ipc === 'NODE') throw failedPrecondition('podvisor runs every pod in its own VM: host PID/IPC namespaces are not available');
    if (config.linux?.cgroup_parent) cgroupParentPath(config.linux.cgroup_parent, this.o.cfg.cgroupDriver);
    podUserNamespace(config); // INVALID_ARGUMENT for a user namespace it cannot run
  }

  async start(rec: SandboxRecord, onEvent: (ev: PodEvent) => void): Promise<VmPod> {
    // the VM boots at its resize ceiling and runs at the pod's size (runtime/resize.ts)
    const size = vmSize(rec.config, this.o.cfg.vm);
    const boot = bootSize(size, this.o.cfg.vm);
    const net = this.o.network.ready();
    const networked = net.ready;
    if (!networked) this.o.logger.warn({ sandbox: rec.id, why: net.message }, 'no pod network configured: the pod gets loopback only');
    const cls = { ...boot, nics: networked ? 1 : 0 };
    const made: { pod?: VmPod } = {};
    try {
      const pod = await this.bootVm(rec, boot, this.o.spares?.take(cls), networked, onEvent, made);
      if (size.vcpus !== boot.vcpus || size.memoryMiB !== boot.memoryMiB) {
        await pod.resize(size);
        rec.size = size;
      }
      return pod;
    } catch (err) {
      await made.pod?.stop(1000).catch(() => undefined);
      await this.leaveCgroup(rec).catch((e) => this.o.logger.error({ sandbox: rec.id, err: e }, 'cgroup removal after a failed start'));
      await this.release(rec).catch((e) => this.o.logger.error({ sandbox: rec.id, err: e }, 'network teardown after a failed start'));
      await fsp.rm(this.dir(rec.id), { recursive: true, force: true });
      throw err;
    } finally {
      this.spareAfterStart.set(rec.id, cls);
    }
  }

  /**
   * The next pod's spare is made once this pod's start is answered, not as its VM is up: the
   * spare's `ip`/`tc`/QEMU spawns fork the daemon while it writes the pod's ready record, and
   * its guest work would compete with the pod's (bench/README "Issue 21"). It runs at a lower
   * CPU priority until taken (SparePool), so it yields to this pod's CreateContainer too.
   */
  afterStart(rec: SandboxRecord): void {
    const cls = this.spareAfterStart.get(rec.id);
    if (!cls) return;
    this.spareAfterStart.delete(rec.id);
    void this.o.spares?.fill(cls);
  }

  private async bootVm(
    rec: SandboxRecord, size: { vcpus: number; memoryMiB: number }, spare: Spare | undefined, networked: boolean,
    onEvent: (ev: PodEvent) => void, made: { pod?: VmPod },
  ): Promise<VmPod> {
    const { id, config } = rec;
    const dir = this.dir(id);
    if (spare) {
      try {
        return await this.bootSpare(rec, spare, networked, onEvent, made);
      } catch (err) {
        // not the pod's fault (e.g. CNI gave two interfaces, the spare has one NIC): start over
        this.o.logger.warn({ sandbox: id, spare: spare.name, err }, 'taking a spare VM failed: starting a fresh clone');
        made.pod = undefined;
        if (spare.vm.alive()) await spare.vm.stop(0).catch(() => undefined);
        await this.leaveCgroup(rec);
        await this.o.spares!.discard(spare);
        await this.release(rec);
        await fsp.rm(dir, { recursive: true, force: true });
      }
    }
    const share = path.join(dir, 'shared');
    await fsp.mkdir(share, { recursive: true, mode: SHARE_DIR_MODE });
    if (networked) rec.network = await this.o.network.setUp(networkRequest(rec));
    faultPoint('sandbox.run:network-up');
    const net = rec.network;
    const vm = await this.o.hypervisor.start({ id, dir, sharePath: share, ...size, network: net ? { netnsPath: net.netnsPath, nics: net.nics } : undefined });
    faultPoint('sandbox.run:vm-started');
    const pod = this.attach(rec, vm, onEvent);
    made.pod = pod;
    await pod.connect(podHostname(config), this.o.cfg.vm.bootTimeoutS * 1000).then((hello) => { rec.agentVersion = hello.agent_version; });
    await this.enterCgroup(rec, vm);
    faultPoint('sandbox.run:cgroup-entered');
    await this.setUpGuest(rec, pod);
    await this.configureGuestNetwork(pod, rec.network);
    return pod;
  }

  /**
   * A spare is already running: it moves into the pod's directory, then the pod's network (CNI
   * ADD, the spare's taps moved into the pod netns) and the guest's new identity and settings
   * (hello, then hostname, DNS, sysctls) are done at the same time; the guest learns its
   * addresses last.
   */
  private async bootSpare(rec: SandboxRecord, spare: Spare, networked: boolean, onEvent: (ev: PodEvent) => void, made: { pod?: VmPod }): Promise<VmPod> {
    const { id, config } = rec;
    await fsp.mkdir(path.dirname(this.dir(id)), { recursive: true });
    await this.o.spares!.moveTo(spare, this.dir(id));
    const pod = this.attach(rec, spare.vm, onEvent);
    made.pod = pod;
    await this.enterCgroup(rec, spare.vm);
    const t0 = Date.now();
    const ms: Record<string, number> = {};
    const guest = pod.connect(podHostname(config), this.o.cfg.vm.bootTimeoutS * 1000, spare.agent).then(async (hello) => {
      rec.agentVersion = hello.agent_version;
      ms.hello = Date.now() - t0;
      await this.setUpGuest(rec, pod);
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
      ? this.o.network.setUp(networkRequest(rec), { adopt, whileWiring }).then((net) => { rec.network = net; })
      : Promise.resolve();
    const [n, g] = await Promise.allSettled([network, guest]);
    if (n.status === 'rejected') throw n.reason;
    if (g.status === 'rejected') throw g.reason;
    rec.vm!.spare = true;
    ms.wired = Date.now() - t0;
    this.o.logger.debug({ sandbox: id, spare: spare.name, ms }, 'spare VM taken');
    return pod;
  }

  private attach(rec: SandboxRecord, vm: Vm, onEvent: (ev: PodEvent) => void): VmPod {
    rec.vm = vm.info;
    const pod = new VmPod(vm, path.join(this.dir(rec.id), 'shared'), this.o.logger, rec.id, this.o.agentCalls);
    pod.onEvent(onEvent);
    return pod;
  }

  /**
   * The VM joins a cgroup of its own under the pod's cgroup_parent (kubelet's pod cgroup) once
   * it is up: what booting it (or keeping it as a spare) touched stays charged where that ran,
   * the podvisor service, so the pod is charged what it costs from then on, which the
   * RuntimeClass overhead covers (an idle pod's private memory), not a cold boot's peak.
   */
  private async enterCgroup(rec: SandboxRecord, vm: Vm): Promise<void> {
    const parent = rec.config.linux?.cgroup_parent;
    if (!parent) return;
    // recorded with the pod once it is ready (a failed start removes them itself)
    rec.cgroups = await enterPodCgroup(parent, this.o.cfg.cgroupDriver, rec.id, vm.info.pid);
  }

  /** Removes the VM's cgroups; the VM must be gone. */
  private async leaveCgroup(rec: SandboxRecord): Promise<void> {
    if (!rec.cgroups?.length) return;
    await removeCgroups(rec.cgroups);
    rec.cgroups = undefined;
  }

  /** Hostname, DNS, sysctls, the share. */
  private async setUpGuest(rec: SandboxRecord, pod: VmPod): Promise<void> {
    const { config } = rec;
    await pod.setup({ hostname: podHostname(config), dns: podDns(config), sysctls: config.linux?.sysctls ?? {} });
  }

  /** The pod's addresses and routes, once its network is set up. */
  private async configureGuestNetwork(pod: VmPod, net: PodNetwork | null): Promise<void> {
    if (net) await pod.agent.call('network.configure', { interfaces: net.interfaces, routes: net.routes });
  }

  async reconnect(rec: SandboxRecord, onEvent: (ev: PodEvent) => void): Promise<VmPod | undefined> {
    if (!rec.vm) return undefined;
    const vm = await this.o.hypervisor.reconnect(rec.vm);
    if (!vm) return undefined;
    vm.reserveScsiIds(await this.o.volumes.scsiIds(rec.id));
    const pod = new VmPod(vm, path.join(this.dir(rec.id), 'shared'), this.o.logger, rec.id, this.o.agentCalls, rec.size);
    if (rec.guestIds) pod.mapContainerIds(rec.guestIds);
    pod.onEvent(onEvent);
    try {
      // as long as a boot may take: on a loaded host a running guest can be as slow to answer,
      // and a pod given up here is stopped
      await pod.connect(podHostname(rec.config), this.o.cfg.vm.bootTimeoutS * 1000);
      this.o.logger.info({ sandbox: rec.id, pid: vm.info.pid }, 'reconnected to pod VM');
    } catch (err) {
      this.o.logger.error({ sandbox: rec.id, err }, 'pod VM does not answer after restart; stopping it');
      await pod.stop(2000);
      return undefined;
    }
    return pod;
  }

  /** The VM whole into `dir` (vm-checkpoint.ts); the share comes back with the guest's settings. */
  async checkpoint(rec: SandboxRecord, pod: Pod, dir: string, o: { resume: boolean; containerNames?: Record<string, string> }): Promise<PodCheckpointState> {
    if (!(pod instanceof VmPod)) throw failedPrecondition(`pod sandbox ${rec.id} is not a VM pod`);
    await pod.checkpoint(path.join(dir, VM_STATE_FILE), { resume: o.resume, timeoutMs: CHECKPOINT_TIMEOUT_MS, names: o.containerNames }, () => this.setUpGuest(rec, pod));
    const i = pod.vm.info;
    const state: VmCheckpointState = {
      vcpus: i.vcpus,
      memoryMiB: i.memoryMiB,
      size: pod.sizing.current,
      nics: rec.network?.nics.length ?? 0,
      ramBackend: i.ramBackend ?? i.bootMode === 'clone',
      disks: i.disks.map((d) => ({ nodeName: d.nodeName, scsiId: d.scsiId, lun: d.lun, readonly: d.readonly })),
    };
    return { files: [VM_STATE_FILE], state: { ...state }, host: this.checkpointHost() };
  }

  /** What a checkpoint of this backend needs of the host that restores it. */
  checkpointHost(): Record<string, string> {
    return vmCheckpointHost(this.o.cfg, this.o.hypervisor.checkpointKeyInputs());
  }

  /**
   * A new pod VM from a checkpoint: the same size, NICs and image disks (at their old
   * addresses), its state loaded before it runs; then, as for a clone, a new identity (hello:
   * entropy, clock, hostname), the pod's cgroup, the share and settings, the containers' share
   * mounts (the new pod's host paths), and the new network, the checkpointed pod's addresses
   * dropped.
   */
  async restore(rec: SandboxRecord, from: PodRestoreSource, onEvent: (ev: PodEvent) => void): Promise<VmPod> {
    const st = vmState(from.state);
    const dir = this.dir(rec.id);
    const made: { pod?: VmPod } = {};
    try {
      const byNode = new Map(Object.entries(rec.images).map(([image, m]) => [m.nodeName, image]));
      const disks: DiskAttachment[] = st.disks.map((d) => {
        const image = byNode.get(d.nodeName);
        const file = image ? from.imageFiles[image] : undefined;
        if (!file) throw failedPrecondition(`checkpoint: disk ${d.nodeName} is no image of the pod`);
        return { ...d, path: file };
      });
      const share = path.join(dir, 'shared');
      await fsp.mkdir(share, { recursive: true, mode: SHARE_DIR_MODE });
      if (st.nics) {
        const net = this.o.network.ready();
        if (!net.ready) throw failedPrecondition(`the checkpointed pod had ${st.nics} network interface(s); this node has no pod network: ${net.message}`);
        rec.network = await this.o.network.setUp(networkRequest(rec));
        if (rec.network.nics.length !== st.nics) throw failedPrecondition(`the pod network has ${rec.network.nics.length} interfaces, the checkpointed VM ${st.nics}`);
      }
      const net = rec.network;
      const vm = await this.o.hypervisor.start(
        { id: rec.id, dir, sharePath: share, vcpus: st.vcpus, memoryMiB: st.memoryMiB, network: net ? { netnsPath: net.netnsPath, nics: net.nics } : undefined },
        { mode: 'restore', statePath: path.join(from.dir, VM_STATE_FILE), disks, ramBackend: st.ramBackend },
      );
      const pod = this.attach(rec, vm, onEvent);
      made.pod = pod;
      pod.mapContainerIds(from.containerIds);
      rec.guestIds = { ...from.containerIds };
      pod.assumeSize(st.size);
      if (st.size.vcpus !== st.vcpus || st.size.memoryMiB !== st.memoryMiB) rec.size = st.size;
      const hello = await pod.connect(podHostname(rec.config), this.o.cfg.vm.bootTimeoutS * 1000);
      rec.agentVersion = hello.agent_version;
      await this.enterCgroup(rec, vm);
      await this.setUpGuest(rec, pod);
      // the containers' share mounts: this pod's host paths bound where the checkpointed pod
      // had its own, then each mount back in its container (guest share.attach)
      for (const b of from.shareBinds) await pod.bindHostPath(b.hostPath, b.rel, b.readonly);
      await pod.attachShare();
      if (net) {
        const interfaces = net.interfaces.map((f, i) => ({ ...f, remove_addresses: (from.network?.interfaces[i]?.addresses ?? []).filter((a) => !f.addresses.includes(a)) }));
        await pod.agent.call('network.configure', { interfaces, routes: net.routes });
      }
      return pod;
    } catch (err) {
      await made.pod?.stop(1000).catch(() => undefined);
      await this.leaveCgroup(rec).catch((e) => this.o.logger.error({ sandbox: rec.id, err: e }, 'cgroup removal after a failed restore'));
      await this.release(rec).catch((e) => this.o.logger.error({ sandbox: rec.id, err: e }, 'network teardown after a failed restore'));
      await fsp.rm(dir, { recursive: true, force: true });
      throw err;
    }
  }

  async release(rec: SandboxRecord): Promise<void> {
    if (!rec.network) return;
    await this.o.network.tearDown(networkRequest(rec), rec.network);
    rec.network = null;
  }

  /**
   * A start a crash interrupted: the pod cgroups (their names follow from the pod), the CNI
   * attachment (DEL from the CNI cache the ADD wrote: frees the lease and the host veth) and the
   * netns, the VM directory. The VM itself is gone (reapStrays).
   */
  async undoStart(rec: SandboxRecord): Promise<void> {
    const parent = rec.config?.linux?.cgroup_parent;
    if (parent) await removeCgroups(rec.cgroups?.length ? rec.cgroups : await podCgroupDirs(parent, this.o.cfg.cgroupDriver, rec.id));
    await this.o.network.tearDown(networkRequest(rec), rec.network ?? null);
    await fsp.rm(this.dir(rec.id), { recursive: true, force: true });
  }

  async remove(rec: SandboxRecord): Promise<void> {
    await this.leaveCgroup(rec);
    await fsp.rm(this.dir(rec.id), { recursive: true, force: true });
  }

  async dropHostPaths(rec: SandboxRecord, rel: string): Promise<void> {
    await fsp.rm(path.join(this.dir(rec.id), 'shared', rel), { recursive: true, force: true });
  }

  /** Kills podvisor VMs that no record knows about (their records were removed). */
  async reapStrays(known: Set<string>): Promise<void> {
    const dir = path.join(this.o.cfg.state, 'vm');
    let names: string[] = [];
    try {
      names = await fsp.readdir(dir);
    } catch {
      return;
    }
    const knownDirs = new Set([...known].map((id) => path.basename(this.dir(id))));
    for (const name of names) {
      if (knownDirs.has(name)) continue;
      const pid = await this.o.hypervisor.reapStray(path.join(dir, name)).catch(() => undefined);
      if (pid) this.o.logger.warn({ sandbox: name, pid }, 'reaped a VM without a record');
      await fsp.rm(path.join(dir, name), { recursive: true, force: true });
    }
  }
}
