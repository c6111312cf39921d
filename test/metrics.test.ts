// The cAdvisor-named metrics of ListPodSandboxMetrics (src/cri/metrics.ts) from one pod's
// figures: every series has as many label values as its descriptor has keys, limits and
// conversions follow cAdvisor, and guest numbers that are not non-negative integers are left out.
import { metricDescriptors, podSandboxMetrics } from '../src/cri/metrics';
import type { PodSample } from '../src/runtime/stats';

const NS = 1_000_000_000;

function sample(guest: Record<string, unknown>, extra: Partial<PodSample> = {}): PodSample {
  const started = BigInt(1_700_000_000) * BigInt(NS);
  return {
    sandbox: { id: 'pod1', config: { metadata: { name: 'web', namespace: 'prod', uid: 'u-1', attempt: 0 } } } as any,
    containers: [
      { id: 'c1', config: { metadata: { name: 'nginx', attempt: 2 } }, imageSpec: { image: 'reg/nginx:1' }, imageId: 'sha256:abc', startedAt: started.toString() } as any,
      { id: 'c2', config: { metadata: { name: 'done', attempt: 0 } }, imageSpec: { image: 'reg/busybox' }, imageId: 'sha256:def', startedAt: '0' } as any,
    ],
    guest: {
      byId: new Map([['c1', { id: 'c1', cpu_usage_ns: 3.5 * NS, memory_working_set: 1000, memory_rss: 700, memory_usage: 1200, pids: 7, ...guest } as any]]),
      layerFs: { bytes: 1 << 30, free_bytes: 1 << 29, inodes: 5000, free_inodes: 4000 },
      interfaces: [
        { name: 'eth0', rx_bytes: 10, rx_packets: 1, rx_errors: 0, rx_dropped: 0, tx_bytes: 20, tx_packets: 2, tx_errors: 0, tx_dropped: 0 },
        { name: 'bad name!', rx_bytes: 1 },
      ],
    },
    vmPrivate: 30 << 20,
    at: BigInt(1_700_000_100) * BigInt(NS),
    ...extra,
  };
}

const full = {
  cpu_user_ns: 2 * NS, cpu_system_ns: 1.5 * NS, cpu_periods: 10, cpu_throttled_periods: 3, cpu_throttled_ns: 4 * NS,
  cpu_quota_us: 20000, cpu_period_us: 100000, cpu_weight: 100,
  memory_cache: 5, memory_mapped_file: 6, memory_kernel: 7, memory_pgfault: 8, memory_pgmajfault: 9, memory_peak: 1500,
  memory_swap: 0, memory_limit: 64 << 20, memory_swap_limit: null, memory_events_max: 1, oom_kills: 1,
  pids_max: null, processes: 2, fds: 12, sockets: 3, io_read_bytes: 1, io_write_bytes: 2, io_reads: 3, io_writes: 4, layer_bytes: 4096, layer_inodes: 3,
  io_devices: [{ major: 254, minor: 0, name: '/dev/vda', read_bytes: 4096, write_bytes: 8192 }, { major: 'x', minor: 1, name: '/dev/bad' }],
};

describe('ListPodSandboxMetrics', () => {
  const keys = Object.fromEntries(metricDescriptors().map((d) => [d.name, d.label_keys]));

  it('gives every series as many label values as its descriptor keys, with the pod as POD', () => {
    const m = podSandboxMetrics(sample(full));
    const all = [...m.metrics, ...m.container_metrics.flatMap((c) => c.metrics)];
    for (const s of all) expect({ name: s.name, n: s.label_values.length }).toEqual({ name: s.name, n: keys[s.name].length });
    const names = new Set(all.map((s) => s.name));
    for (const d of Object.keys(keys)) expect({ d, present: names.has(d) }).toEqual({ d, present: true });
    const pod = Object.fromEntries(m.metrics.map((s) => [`${s.name}${s.label_values[3] ?? ''}`, s]));
    expect(pod.container_memory_working_set_bytes).toMatchObject({ label_values: ['pod1', 'POD', ''], value: { value: String(30 << 20) }, metric_type: 'GAUGE' });
    expect(pod.container_network_receive_bytes_totaleth0).toMatchObject({ label_values: ['pod1', 'POD', '', 'eth0'], value: { value: '10' }, metric_type: 'COUNTER' });
    expect(m.metrics.some((s) => s.label_values.includes('bad name!'))).toBe(false);
  });

  it("follows cAdvisor's names, units and limits", () => {
    const m = podSandboxMetrics(sample(full));
    const c1 = m.container_metrics.find((c) => c.container_id === 'c1')!;
    const v = (name: string) => c1.metrics.find((s) => s.name === name)?.value.value;
    expect(c1.metrics[0].label_values).toEqual(['c1', 'k8s_nginx_web_prod_u-1_2', 'reg/nginx:1']);
    expect(v('container_cpu_usage_seconds_total')).toBe('3'); // whole seconds
    expect(v('container_cpu_cfs_throttled_seconds_total')).toBe('4');
    expect(v("container_spec_cpu_shares")).toBe("2597"); // weight 100 back to shares, by the runtimes' conversion
    expect(v('container_spec_memory_limit_bytes')).toBe(String(64 << 20));
    expect(v('container_spec_memory_swap_limit_bytes')).toBe('0'); // "max": unlimited
    expect(v('container_threads_max')).toBe('0');
    expect(v('container_start_time_seconds')).toBe('1700000000');
    expect(v('container_last_seen')).toBe('1700000100');
    expect(c1.metrics.filter((s) => s.name === 'container_blkio_device_usage_total').map((s) => [...s.label_values.slice(3), s.value.value])).toEqual([
      ['/dev/vda', '254', '0', 'Read', '4096'],
      ['/dev/vda', '254', '0', 'Write', '8192'],
    ]);
    expect(c1.metrics.filter((s) => s.name === 'container_memory_failures_total').map((s) => s.label_values.slice(3).join('/')).sort()).toEqual(['pgfault/container', 'pgfault/hierarchy', 'pgmajfault/container', 'pgmajfault/hierarchy']);
    // an exited container has no live figures, and no start time when it never started
    const c2 = m.container_metrics.find((c) => c.container_id === 'c2')!;
    expect(c2.metrics.map((s) => s.name)).toEqual(['container_last_seen']);
  });

  it('leaves out guest numbers that are not non-negative integers', () => {
    const m = podSandboxMetrics(sample({ ...full, fds: -1, sockets: 1.5, memory_cache: '5', cpu_periods: 2 ** 60, cpu_user_ns: Number.NaN }, { vmPrivate: undefined }));
    const names = m.container_metrics[0].metrics.map((s) => s.name);
    for (const gone of ['container_file_descriptors', 'container_sockets', 'container_memory_cache', 'container_cpu_cfs_periods_total', 'container_cpu_user_seconds_total']) expect(names).not.toContain(gone);
    expect(m.metrics.map((s) => s.name)).not.toContain('container_memory_working_set_bytes');
  });
});
