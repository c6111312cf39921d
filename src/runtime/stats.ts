// Container and pod stats: container figures come from the guest's cgroups (agent `stats`);
// the pod's memory is what its VM privately costs the host (QEMU's private pages), so pages
// shared with a VM template are not charged to every pod. A container's writable layer lives in
// guest memory, but kubelet stats the host directory its fs_id names (cadvisor's GetDirFsInfo;
// a path that does not exist fails the whole /stats/summary): it names the container
// filesystem ImageFsInfo reports, as containerd names its snapshotter root for both.
import type { ContainerStats, ContainerStatsFilter, PodSandboxStats, PodSandboxStatsFilter } from '../../cri-api/messages';
import type { Logger } from '../util/log';
import { nowNs } from './container-log';
import type { ContainerManager } from './containers';
import { ContainerRecord, labelsMatch, SandboxRecord } from './records';
import type { Sandbox, SandboxManager } from './sandboxes';

/** What the agent's `stats` says of a container (guest/agent/src/stats.rs); untrusted numbers. */
export interface GuestContainerStats {
  id: string;
  cpu_usage_ns: number;
  memory_working_set: number;
  memory_rss: number;
  memory_usage: number;
  pids: number;
  [more: string]: unknown;
}

/** What the agent's `stats` says of the pod's guest: the writable layers' file system, its NICs. */
export interface GuestPodStats {
  byId: Map<string, GuestContainerStats>;
  total?: number;
  available?: number;
  layerFs?: Record<string, unknown>;
  interfaces: Array<Record<string, unknown>>;
}

/** The figures of one pod, as the guest and the host see them (ListPodSandboxMetrics). */
export interface PodSample {
  sandbox: SandboxRecord;
  containers: ContainerRecord[];
  guest: GuestPodStats;
  /** the VM's private memory on the host, bytes */
  vmPrivate?: number;
  at: bigint;
}

const u64 = (v: number | bigint | undefined) => (v === undefined ? null : { value: String(v) });

export class StatsCollector {
  /** previous cumulative CPU samples, for usage_nano_cores */
  private readonly lastCpu = new Map<string, { ns: bigint; usage: number }>();

  /**
   * `containerFsDir`: the host directory ImageFsInfo reports as the container filesystem; every
   * writable layer's fs_id names it (it must exist: kubelet stats it).
   */
  constructor(
    private readonly sandboxes: SandboxManager,
    private readonly containers: ContainerManager,
    private readonly logger: Logger,
    private readonly containerFsDir: string,
  ) {}

  private rate(key: string, usage: number, at: bigint): number | undefined {
    if (this.lastCpu.size > 4 * (this.containers.containers.size + this.sandboxes.sandboxes.size) + 64) this.prune();
    const prev = this.lastCpu.get(key);
    this.lastCpu.set(key, { ns: at, usage });
    if (!prev || at <= prev.ns || usage < prev.usage) return undefined;
    return Math.round(((usage - prev.usage) * 1e9) / Number(at - prev.ns));
  }

  private async guestStats(sb: Sandbox, ids: string[]): Promise<GuestPodStats> {
    const byId = new Map<string, GuestContainerStats>();
    if (!sb.pod || sb.rec.state !== 'SANDBOX_READY') return { byId, interfaces: [] };
    try {
      // empty ids: no container, the pod's own figures (layer file system, NICs) only
      const r = await sb.pod.stats(ids);
      for (const c of Array.isArray(r?.containers) ? r.containers.slice(0, ids.length) : []) {
        const g = c as GuestContainerStats | undefined;
        if (typeof g?.id === 'string' && ids.includes(g.id)) byId.set(g.id, g);
      }
      const obj = (v: unknown) => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined);
      return {
        byId,
        total: Number(r?.memory_total) || undefined,
        available: Number(r?.memory_available) || undefined,
        layerFs: obj(r?.layer_fs),
        interfaces: (Array.isArray(r?.interfaces) ? r.interfaces.slice(0, 64) : []).map(obj).filter((x: unknown): x is Record<string, unknown> => !!x),
      };
    } catch (err) {
      this.logger.debug({ sandbox: sb.rec.id, err }, 'guest stats unavailable');
      return { byId, interfaces: [] };
    }
  }

  /** A pod's figures at one moment: its containers' from the guest, its VM's from the host. */
  async sample(sb: Sandbox): Promise<PodSample> {
    const containers = this.containers.list({ pod_sandbox_id: sb.rec.id });
    const running = containers.filter((r) => r.state === 'CONTAINER_RUNNING' || r.state === 'CONTAINER_CREATED');
    const guest = await this.guestStats(sb, running.map((r) => r.id));
    const vmPrivate = sb.pod ? await sb.pod.hostPrivateBytes() : undefined;
    return { sandbox: sb.rec, containers, guest, vmPrivate, at: nowNs() };
  }

  /** Samples of every pod. */
  async samples(): Promise<PodSample[]> {
    return Promise.all([...this.sandboxes.sandboxes.values()].map((s) => this.sample(s)));
  }

  private containerStats(rec: ContainerRecord, g: GuestContainerStats | undefined, at: bigint, available?: number): ContainerStats {
    const ts = at.toString();
    return {
      attributes: { id: rec.id, metadata: rec.config.metadata, labels: rec.config.labels ?? {}, annotations: rec.config.annotations ?? {} },
      cpu: { timestamp: ts, usage_core_nano_seconds: u64(g?.cpu_usage_ns ?? 0), usage_nano_cores: u64(g ? this.rate(rec.id, g.cpu_usage_ns, at) : undefined) },
      memory: {
        timestamp: ts,
        working_set_bytes: u64(g?.memory_working_set ?? 0),
        usage_bytes: u64(g?.memory_usage ?? 0),
        rss_bytes: u64(g?.memory_rss ?? 0),
        available_bytes: u64(available),
      },
      // the writable layer lives in guest memory; its bytes are part of the memory figures
      writable_layer: { timestamp: ts, fs_id: { mountpoint: this.containerFsDir }, used_bytes: u64(0), inodes_used: u64(0) },
    };
  }

  async listContainerStats(filter: ContainerStatsFilter | null | undefined): Promise<ContainerStats[]> {
    const recs = this.containers.list({ id: filter?.id, pod_sandbox_id: filter?.pod_sandbox_id, label_selector: filter?.label_selector });
    const out: ContainerStats[] = [];
    const bySandbox = new Map<string, ContainerRecord[]>();
    for (const r of recs) bySandbox.set(r.sandboxId, [...(bySandbox.get(r.sandboxId) ?? []), r]);
    for (const [sid, list] of bySandbox) {
      const sb = this.sandboxes.find(sid);
      if (!sb) continue;
      const running = list.filter((r) => r.state === 'CONTAINER_RUNNING' || r.state === 'CONTAINER_CREATED');
      // nothing to ask the guest when none runs (kubelet polls this for every pod)
      const g = running.length ? await this.guestStats(sb, running.map((r) => r.id)) : undefined;
      const at = nowNs();
      for (const r of list) out.push(this.containerStats(r, g?.byId.get(r.id), at, g?.available));
    }
    return out;
  }

  async podStats(sb: Sandbox): Promise<PodSandboxStats> {
    const { sandbox: rec, containers: list, guest: g, vmPrivate: priv, at } = await this.sample(sb);
    const ts = at.toString();
    const cpu = [...g.byId.values()].reduce((n, c) => n + (Number(c.cpu_usage_ns) || 0), 0);
    const pids = [...g.byId.values()].reduce((n, c) => n + (Number(c.pids) || 0), 0);
    return {
      attributes: { id: rec.id, metadata: rec.config.metadata, labels: rec.config.labels ?? {}, annotations: rec.config.annotations ?? {} },
      linux: {
        cpu: { timestamp: ts, usage_core_nano_seconds: u64(cpu), usage_nano_cores: u64(this.rate(`pod:${rec.id}`, cpu, at)) },
        memory: { timestamp: ts, working_set_bytes: u64(priv ?? 0), usage_bytes: u64(priv ?? 0), available_bytes: u64(g.available) },
        process: { timestamp: ts, process_count: u64(pids) },
        containers: list.map((r) => this.containerStats(r, g.byId.get(r.id), at, g.available)),
      },
    };
  }

  async listPodStats(filter: PodSandboxStatsFilter | null | undefined): Promise<PodSandboxStats[]> {
    const sbs = [...this.sandboxes.sandboxes.values()]
      .filter((s) => !filter?.id || s.rec.id === filter.id || s.rec.id.startsWith(filter.id))
      .filter((s) => labelsMatch(s.rec.config.labels, filter?.label_selector));
    return Promise.all(sbs.map((s) => this.podStats(s)));
  }

  /** Drops CPU samples of containers and pods that are gone. */
  private prune(): void {
    for (const key of this.lastCpu.keys()) {
      const gone = key.startsWith('pod:') ? !this.sandboxes.sandboxes.has(key.slice(4)) : !this.containers.containers.has(key);
      if (gone) this.lastCpu.delete(key);
    }
  }
}
