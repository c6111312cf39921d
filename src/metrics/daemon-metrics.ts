// The daemon's Prometheus metrics (prom-client), in a registry of its own. The layers below know
// nothing of prom-client: each reports through a small observer it defines itself (the agent
// client's AgentCallObserver, the image manager's ImagePullObserver, the sandbox manager's
// SandboxObserver, the gRPC server's GrpcCallObserver), and the gauges are read from their
// sources when Prometheus scrapes (pods and containers from the runtime, VMs, templates and
// spares from the VM pool, event streams from cri/events). This module turns those into
// instruments; the daemon wires them. Every label value comes from a small fixed set (method
// names of our own tables, error codes of the one error family, backend kinds, start paths):
// nothing a guest, an image or a CRI caller sends becomes a label.
import client from 'prom-client';
import type { AgentCallObserver } from '../agent/client';
import type { EventStreamStats } from '../cri/events';
import type { ImagePullObserver } from '../image/manager';
import type { SandboxObserver } from '../runtime/sandboxes';
import type { GrpcCallObserver } from '../server';
import type { PoolCounts } from '../vm/pool';

/** Where the gauges read their values at scrape time. */
export interface MetricSources {
  /** the registered pod backends' kinds (each gets a series, 0 included) */
  backends: string[];
  /** pods whose processes run, by backend kind */
  podsRunning(): Record<string, number>;
  /** containers by CRI state */
  containers(): Record<string, number>;
  /** the VM pool's counts; undefined without one */
  pool(): PoolCounts | undefined;
  events: EventStreamStats;
}

const FAST = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
const POD_START = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120];
const PULL = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];
const CONTAINER_STATES = ['CONTAINER_CREATED', 'CONTAINER_RUNNING', 'CONTAINER_EXITED', 'CONTAINER_UNKNOWN'];

export class DaemonMetrics {
  readonly registry = new client.Registry();
  private sources?: MetricSources;

  private readonly podStart = new client.Histogram({
    name: 'podvisor_pod_start_duration_seconds',
    help: 'RunPodSandbox until the pod is ready, by backend and how the pod was made (VM: spare, clone, cold)',
    labelNames: ['backend', 'path'] as const,
    buckets: POD_START,
    registers: [this.registry],
  });

  private readonly podStartFailures = new client.Counter({
    name: 'podvisor_pod_start_failures_total',
    help: 'RunPodSandbox calls whose pod did not start, by backend',
    labelNames: ['backend'] as const,
    registers: [this.registry],
  });

  private readonly agentRpc = new client.Histogram({
    name: 'podvisor_agent_rpc_duration_seconds',
    help: 'Guest agent requests (pods, spares, template builds), by method',
    labelNames: ['method'] as const,
    buckets: FAST,
    registers: [this.registry],
  });

  private readonly agentRpcErrors = new client.Counter({
    name: 'podvisor_agent_rpc_errors_total',
    help: 'Guest agent requests that failed, by method and error code',
    labelNames: ['method', 'code'] as const,
    registers: [this.registry],
  });

  private readonly grpcCalls = new client.Counter({
    name: 'podvisor_grpc_requests_total',
    help: 'CRI gRPC calls served, by method and gRPC status code',
    labelNames: ['method', 'code'] as const,
    registers: [this.registry],
  });

  private readonly grpcDuration = new client.Histogram({
    name: 'podvisor_grpc_request_duration_seconds',
    help: 'CRI gRPC calls served, by method (server streams: until the stream ended)',
    labelNames: ['method'] as const,
    buckets: FAST,
    registers: [this.registry],
  });

  private readonly pullDuration = new client.Histogram({
    name: 'podvisor_image_pull_duration_seconds',
    help: 'Image pulls, by outcome (ok or the error code)',
    labelNames: ['outcome'] as const,
    buckets: PULL,
    registers: [this.registry],
  });

  private readonly pullBytes = new client.Counter({
    name: 'podvisor_image_pull_bytes_total',
    help: 'Layer bytes downloaded from registries (layers already stored cost none)',
    registers: [this.registry],
  });

  constructor() {
    const self = this;
    client.collectDefaultMetrics({ register: this.registry });
    new client.Gauge({
      name: 'podvisor_pods_running',
      help: 'Pods whose processes run (a VM up, host namespaces held), by backend',
      labelNames: ['backend'] as const,
      registers: [this.registry],
      collect() {
        const s = self.sources;
        if (!s) return;
        const n = s.podsRunning();
        for (const b of new Set([...s.backends, ...Object.keys(n)])) this.set({ backend: b }, n[b] ?? 0);
      },
    });
    new client.Gauge({
      name: 'podvisor_containers',
      help: 'Containers known to the daemon, by CRI state',
      labelNames: ['state'] as const,
      registers: [this.registry],
      collect() {
        const n = self.sources?.containers();
        if (!n) return;
        for (const st of CONTAINER_STATES) this.set({ state: st }, n[st] ?? 0);
      },
    });
    new client.Gauge({
      name: 'podvisor_vms_running',
      help: 'VM processes the daemon runs (pods, warm spares, templates being built), by how they started: cold, clone, template',
      labelNames: ['origin'] as const,
      registers: [this.registry],
      collect() {
        const p = self.sources?.pool();
        if (!p) return;
        for (const [origin, n] of Object.entries(p.vms)) this.set({ origin }, n);
      },
    });
    const poolGauge = (name: string, help: string, pick: (p: PoolCounts) => number) =>
      new client.Gauge({
        name,
        help,
        registers: [this.registry],
        collect() {
          const p = self.sources?.pool();
          if (p) this.set(pick(p));
        },
      });
    poolGauge('podvisor_vm_templates', 'VM templates on disk that pods can be cloned from', (p) => p.templates);
    poolGauge('podvisor_vm_template_builds', 'VM template builds under way', (p) => p.templateBuilds);
    poolGauge('podvisor_vm_spares_ready', 'Warm spare VMs ready to be taken by a pod', (p) => p.spares);
    new client.Gauge({
      name: 'podvisor_container_event_subscribers',
      help: 'GetContainerEvents streams open',
      registers: [this.registry],
      collect() {
        if (self.sources) this.set(self.sources.events.subscribers);
      },
    });
    // counters kept by the event streams themselves, copied at scrape time
    const eventCounter = (name: string, help: string, pick: (e: EventStreamStats) => number) =>
      new client.Counter({
        name,
        help,
        registers: [this.registry],
        collect() {
          if (!self.sources) return;
          this.reset();
          this.inc(pick(self.sources.events));
        },
      });
    eventCounter('podvisor_container_event_streams_cut_total', 'GetContainerEvents streams cut off (RESOURCE_EXHAUSTED) because their client fell behind', (e) => e.cutOff);
    eventCounter('podvisor_container_events_dropped_total', 'Container events not delivered to a stream that was cut off', (e) => e.dropped);
  }

  /** Where the gauges read from; set once the daemon has made the runtime. */
  setSources(s: MetricSources): void {
    this.sources = s;
  }

  readonly agentCalls: AgentCallObserver = (method, seconds, errorCode) => {
    this.agentRpc.observe({ method }, seconds);
    if (errorCode) this.agentRpcErrors.inc({ method, code: errorCode });
  };

  readonly grpcCall: GrpcCallObserver = (method, code, seconds) => {
    this.grpcCalls.inc({ method, code });
    this.grpcDuration.observe({ method }, seconds);
  };

  readonly sandboxes: SandboxObserver = {
    started: (backend, path, seconds) => this.podStart.observe({ backend, path }, seconds),
    failed: (backend) => this.podStartFailures.inc({ backend }),
  };

  readonly pulls: ImagePullObserver = {
    pulled: (seconds, outcome) => this.pullDuration.observe({ outcome }, seconds),
    fetched: (bytes) => this.pullBytes.inc(bytes),
  };

  /** The Prometheus text exposition of everything. */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
