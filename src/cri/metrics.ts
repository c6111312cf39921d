// ListMetricDescriptors, ListPodSandboxMetrics (and, through list-streams.ts,
// StreamPodSandboxMetrics): the pods' and containers' figures under cAdvisor's metric names,
// for kubelet's /metrics/cadvisor when it takes them from the runtime
// (PodAndContainerStatsFromCRI). kubelet adds the `container`, `pod` and `namespace` labels
// itself; every series here carries `id`, `name` (cAdvisor's k8s_<container>_<pod>_<ns>_<uid>_<attempt>)
// and `image`, some one or two more. A pod's own series (its VM: network, host memory) are named
// `POD`, as cAdvisor names the pod cgroup.
//
// Container figures come from the guest (its cgroup v2 files, the processes' descriptors, the
// writable layer in the guest's tmpfs): they are untrusted, so anything that is not a
// non-negative integer is left out. Values are unsigned integers on the wire: seconds are whole.
import type { ContainerRecord } from '../runtime/records';
import type { GuestContainerStats, PodSample, StatsCollector } from '../runtime/stats';

type Kind = 'COUNTER' | 'GAUGE';

const BASE = ['id', 'name', 'image'];
/** name → help, type, the label keys after BASE */
const METRICS: Record<string, [string, Kind, string[]?]> = {
  container_cpu_usage_seconds_total: ['Cumulative CPU time consumed, in seconds.', 'COUNTER'],
  container_cpu_user_seconds_total: ['Cumulative user CPU time consumed, in seconds.', 'COUNTER'],
  container_cpu_system_seconds_total: ['Cumulative system CPU time consumed, in seconds.', 'COUNTER'],
  container_cpu_cfs_periods_total: ['Number of elapsed enforcement period intervals.', 'COUNTER'],
  container_cpu_cfs_throttled_periods_total: ['Number of throttled period intervals.', 'COUNTER'],
  container_cpu_cfs_throttled_seconds_total: ['Total time duration the container has been throttled, in seconds.', 'COUNTER'],
  container_memory_usage_bytes: ['Current memory usage, in bytes, including all memory regardless of when it was accessed (a pod: its VM\'s private memory on the host).', 'GAUGE'],
  container_memory_working_set_bytes: ['Current working set, in bytes (a pod: its VM\'s private memory on the host).', 'GAUGE'],
  container_memory_max_usage_bytes: ['Maximum memory usage recorded, in bytes.', 'GAUGE'],
  container_memory_cache: ['Number of bytes of page cache memory.', 'GAUGE'],
  container_memory_rss: ['Size of RSS, in bytes.', 'GAUGE'],
  container_memory_kernel_usage: ['Size of kernel memory allocated, in bytes.', 'GAUGE'],
  container_memory_mapped_file: ['Size of memory mapped files, in bytes.', 'GAUGE'],
  container_memory_swap: ['Container swap usage, in bytes.', 'GAUGE'],
  container_memory_failcnt: ['Number of times the memory usage hit its limit.', 'COUNTER'],
  container_memory_failures_total: ['Cumulative count of memory allocation failures.', 'COUNTER', ['failure_type', 'scope']],
  container_oom_events_total: ['Count of out of memory events observed for the container.', 'COUNTER'],
  container_processes: ['Number of processes running inside the container.', 'GAUGE'],
  container_threads: ['Number of threads running inside the container.', 'GAUGE'],
  container_threads_max: ['Maximum number of threads allowed inside the container, 0 for unlimited.', 'GAUGE'],
  container_file_descriptors: ['Number of open file descriptors for the container.', 'GAUGE'],
  container_sockets: ['Number of open sockets for the container.', 'GAUGE'],
  container_spec_cpu_period: ['CPU period of the container.', 'GAUGE'],
  container_spec_cpu_shares: ['CPU share of the container.', 'GAUGE'],
  container_spec_memory_limit_bytes: ['Memory limit for the container, 0 for unlimited.', 'GAUGE'],
  container_spec_memory_swap_limit_bytes: ['Memory swap limit for the container, 0 for unlimited.', 'GAUGE'],
  container_start_time_seconds: ['Start time of the container since the Unix epoch, in seconds.', 'GAUGE'],
  container_last_seen: ['Last time the container was seen by the runtime, in seconds since the Unix epoch.', 'GAUGE'],
  container_fs_usage_bytes: ['Number of bytes consumed by the container on this file system (its writable layer).', 'GAUGE', ['device']],
  container_fs_limit_bytes: ['Number of bytes the container can consume on this file system.', 'GAUGE', ['device']],
  container_fs_inodes_total: ['Number of inodes on this file system.', 'GAUGE', ['device']],
  container_fs_inodes_free: ['Number of free inodes on this file system.', 'GAUGE', ['device']],
  container_blkio_device_usage_total: ['Block I/O device usage in bytes, per device and operation.', 'COUNTER', ['device', 'major', 'minor', 'operation']],
  container_fs_reads_bytes_total: ['Cumulative count of bytes read from block devices.', 'COUNTER', ['device']],
  container_fs_writes_bytes_total: ['Cumulative count of bytes written to block devices.', 'COUNTER', ['device']],
  container_fs_reads_total: ['Cumulative count of reads completed on block devices.', 'COUNTER', ['device']],
  container_fs_writes_total: ['Cumulative count of writes completed on block devices.', 'COUNTER', ['device']],
  container_network_receive_bytes_total: ['Cumulative count of bytes received.', 'COUNTER', ['interface']],
  container_network_receive_packets_total: ['Cumulative count of packets received.', 'COUNTER', ['interface']],
  container_network_receive_errors_total: ['Cumulative count of errors encountered while receiving.', 'COUNTER', ['interface']],
  container_network_receive_packets_dropped_total: ['Cumulative count of packets dropped while receiving.', 'COUNTER', ['interface']],
  container_network_transmit_bytes_total: ['Cumulative count of bytes transmitted.', 'COUNTER', ['interface']],
  container_network_transmit_packets_total: ['Cumulative count of packets transmitted.', 'COUNTER', ['interface']],
  container_network_transmit_errors_total: ['Cumulative count of errors encountered while transmitting.', 'COUNTER', ['interface']],
  container_network_transmit_packets_dropped_total: ['Cumulative count of packets dropped while transmitting.', 'COUNTER', ['interface']],
};

/** The file system a container's writable layer is on, as the `device` label names it. */
const LAYER_DEVICE = 'guest-tmpfs';
/** Block I/O summed over the guest's disks, as the `device` label names it. */
const ALL_DISKS = 'all';
const NS = 1_000_000_000n;

/** A guest number that is a non-negative integer, else undefined (left out). */
function n(v: unknown): bigint | undefined {
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return BigInt(v);
  return undefined;
}

const limit = (v: unknown) => (v === null ? 0n : n(v)); // "max" (null) is unlimited: 0, as cAdvisor

export function metricDescriptors() {
  return Object.entries(METRICS).map(([name, [help, , extra]]) => ({ name, help, label_keys: [...BASE, ...(extra ?? [])] }));
}

/** cAdvisor's container name, which dashboards match on. */
function cadvisorName(c: ContainerRecord, pod: PodSample['sandbox']): string {
  const md = c.config.metadata ?? {};
  const p = pod.config.metadata ?? {};
  return `k8s_${md.name ?? ''}_${p.name ?? ''}_${p.namespace ?? ''}_${p.uid ?? ''}_${md.attempt ?? 0}`;
}

export function podSandboxMetrics(s: PodSample) {
  const ts = s.at.toString();
  const series = (name: string, labels: string[], v: bigint | undefined) =>
    v === undefined ? [] : [{ name, timestamp: ts, metric_type: METRICS[name][1], label_values: labels, value: { value: v.toString() } }];
  const pod = [s.sandbox.id, 'POD', ''];
  const guest = [...s.guest.byId.values()];
  const sum = (k: string) => guest.reduce<bigint | undefined>((a, g) => (n(g[k]) === undefined ? a : (a ?? 0n) + n(g[k])!), undefined);
  const podCpu = sum('cpu_usage_ns');
  const metrics = [
    ...series('container_cpu_usage_seconds_total', pod, podCpu === undefined ? undefined : podCpu / NS),
    ...series('container_memory_usage_bytes', pod, n(s.vmPrivate)),
    ...series('container_memory_working_set_bytes', pod, n(s.vmPrivate)),
    ...series('container_processes', pod, sum('processes')),
    ...s.guest.interfaces.flatMap((i) => {
      if (typeof i.name !== 'string' || !/^[A-Za-z0-9_.:@-]{1,15}$/.test(i.name)) return [];
      const l = [...pod, i.name];
      return [
        ...series('container_network_receive_bytes_total', l, n(i.rx_bytes)),
        ...series('container_network_receive_packets_total', l, n(i.rx_packets)),
        ...series('container_network_receive_errors_total', l, n(i.rx_errors)),
        ...series('container_network_receive_packets_dropped_total', l, n(i.rx_dropped)),
        ...series('container_network_transmit_bytes_total', l, n(i.tx_bytes)),
        ...series('container_network_transmit_packets_total', l, n(i.tx_packets)),
        ...series('container_network_transmit_errors_total', l, n(i.tx_errors)),
        ...series('container_network_transmit_packets_dropped_total', l, n(i.tx_dropped)),
      ];
    }),
  ];
  const fs = s.guest.layerFs ?? {};
  const containers = s.containers.map((c) => {
    const g: GuestContainerStats | undefined = s.guest.byId.get(c.id);
    const l = [c.id, cadvisorName(c, s.sandbox), c.imageSpec?.image ?? c.imageId ?? ''];
    const started = /^\d+$/.test(c.startedAt ?? '') && c.startedAt !== '0' ? BigInt(c.startedAt) / NS : undefined;
    const out = [
      ...series('container_start_time_seconds', l, started),
      ...series('container_last_seen', l, s.at / NS),
    ];
    if (!g) return { container_id: c.id, metrics: out }; // not running: no live figures
    const weight = n(g.cpu_weight);
    const dev = [...l, LAYER_DEVICE];
    const disks = [...l, ALL_DISKS];
    out.push(
      ...series('container_cpu_usage_seconds_total', l, div(n(g.cpu_usage_ns), NS)),
      ...series('container_cpu_user_seconds_total', l, div(n(g.cpu_user_ns), NS)),
      ...series('container_cpu_system_seconds_total', l, div(n(g.cpu_system_ns), NS)),
      ...series('container_cpu_cfs_periods_total', l, n(g.cpu_periods)),
      ...series('container_cpu_cfs_throttled_periods_total', l, n(g.cpu_throttled_periods)),
      ...series('container_cpu_cfs_throttled_seconds_total', l, div(n(g.cpu_throttled_ns), NS)),
      ...series('container_memory_usage_bytes', l, n(g.memory_usage)),
      ...series('container_memory_working_set_bytes', l, n(g.memory_working_set)),
      ...series('container_memory_max_usage_bytes', l, n(g.memory_peak)),
      ...series('container_memory_cache', l, n(g.memory_cache)),
      ...series('container_memory_rss', l, n(g.memory_rss)),
      ...series('container_memory_kernel_usage', l, n(g.memory_kernel)),
      ...series('container_memory_mapped_file', l, n(g.memory_mapped_file)),
      ...series('container_memory_swap', l, n(g.memory_swap)),
      ...series('container_memory_failcnt', l, n(g.memory_events_max)),
      // the guest has one memory cgroup level per container: container and hierarchy agree
      ...['container', 'hierarchy'].flatMap((scope) => [
        ...series('container_memory_failures_total', [...l, 'pgfault', scope], n(g.memory_pgfault)),
        ...series('container_memory_failures_total', [...l, 'pgmajfault', scope], n(g.memory_pgmajfault)),
      ]),
      ...series('container_oom_events_total', l, n(g.oom_kills)),
      ...series('container_processes', l, n(g.processes)),
      ...series('container_threads', l, n(g.pids)),
      ...series('container_threads_max', l, limit(g.pids_max)),
      ...series('container_file_descriptors', l, n(g.fds)),
      ...series('container_sockets', l, n(g.sockets)),
      ...series('container_spec_cpu_period', l, n(g.cpu_period_us)),
      // cgroup v2 weight back to v1 shares (the inverse of the runtime's shares → weight)
      ...series('container_spec_cpu_shares', l, weight === undefined ? undefined : 2n + ((weight - 1n) * 262142n) / 9999n),
      ...series('container_spec_memory_limit_bytes', l, limit(g.memory_limit)),
      ...series('container_spec_memory_swap_limit_bytes', l, limit(g.memory_swap_limit)),
      ...series('container_fs_usage_bytes', dev, n(g.layer_bytes)),
      ...series('container_fs_limit_bytes', dev, n(fs.bytes)),
      ...series('container_fs_inodes_total', dev, n(fs.inodes)),
      ...series('container_fs_inodes_free', dev, n(fs.free_inodes)),
      ...series('container_fs_reads_bytes_total', disks, n(g.io_read_bytes)),
      ...series('container_fs_writes_bytes_total', disks, n(g.io_write_bytes)),
      ...series('container_fs_reads_total', disks, n(g.io_reads)),
      ...series('container_fs_writes_total', disks, n(g.io_writes)),
      ...(Array.isArray(g.io_devices) ? g.io_devices.slice(0, 64) : []).flatMap((dv: Record<string, unknown>) => {
        const name = typeof dv?.name === 'string' && /^[A-Za-z0-9/_.-]{0,64}$/.test(dv.name) ? dv.name : '';
        if (n(dv?.major) === undefined || n(dv?.minor) === undefined) return [];
        const d = [...l, name, String(dv.major), String(dv.minor)];
        return [
          ...series('container_blkio_device_usage_total', [...d, 'Read'], n(dv.read_bytes)),
          ...series('container_blkio_device_usage_total', [...d, 'Write'], n(dv.write_bytes)),
        ];
      }),
    );
    return { container_id: c.id, metrics: out };
  });
  return { pod_sandbox_id: s.sandbox.id, metrics, container_metrics: containers };
}

function div(v: bigint | undefined, by: bigint): bigint | undefined {
  return v === undefined ? undefined : v / by;
}

export function metricsHandlers(stats: StatsCollector) {
  return {
    async ListMetricDescriptors() {
      return { descriptors: metricDescriptors() };
    },

    async ListPodSandboxMetrics() {
      return { pod_metrics: (await stats.samples()).map(podSandboxMetrics) };
    },
  };
}
