// The daemon's Prometheus metrics without a daemon: `[metrics] address` parsing and refusals,
// each layer's observer landing in the right series (the agent client against a scripted
// guest on a real unix socket), the gauges read from their sources at scrape time, and the
// endpoint itself over real HTTP. The e2e (e2e/metrics.test.ts) scrapes a real daemon.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { AgentClient } from '../src/agent/client';
import { encodeJson, Kind } from '../src/agent/protocol';
import { ConfigError, loadConfig, parseHostPort } from '../src/config/config';
import { EventStreamStats } from '../src/cri/events';
import { DaemonMetrics, type MetricSources } from '../src/metrics/daemon-metrics';
import { serveMetrics } from '../src/metrics/endpoint';
import { silentLogger } from '../src/util/log';
import { sample } from './support/prometheus';

describe('[metrics] address', () => {
  test('host:port forms are accepted', () => {
    expect(parseHostPort('127.0.0.1:9338')).toEqual({ host: '127.0.0.1', port: 9338 });
    expect(parseHostPort('[::1]:1338')).toEqual({ host: '::1', port: 1338 });
    expect(parseHostPort('node-1.internal:65535')).toEqual({ host: 'node-1.internal', port: 65535 });
  });

  test.each([
    ['9338', /no port/],
    ['127.0.0.1', /no port/],
    ['::1:9338', /not a host and port/],
    ['127.0.0.1:0', /port must be 1\.\.65535/],
    ['127.0.0.1:70000', /port must be 1\.\.65535/],
    ['300.1.1.1:9338', /bad host "300\.1\.1\.1"/],
    ['[zz::1]:9338', /not a host and port/],
    ['http://127.0.0.1:9338', /not a host and port/],
  ])('%s is refused, saying why and what is expected', (address, why) => {
    expect(() => parseHostPort(address)).toThrow(ConfigError);
    expect(() => parseHostPort(address)).toThrow(why);
    expect(() => parseHostPort(address)).toThrow(/expected host:port such as "127\.0\.0\.1:9338"/);
  });

  test('off by default; a bad address in a config file is a config error naming the file', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-metrics-cfg-'));
    try {
      expect(loadConfig(undefined, true).metrics.address).toBe('');
      const file = path.join(dir, 'config.toml');
      fs.writeFileSync(file, 'version = 1\n[metrics]\naddress = "localhost"\n');
      expect(() => loadConfig(file, false)).toThrow(ConfigError);
      expect(() => loadConfig(file, false)).toThrow(`${file}: metrics.address = "localhost": no port`);
      fs.writeFileSync(file, 'version = 1\n[metrics]\naddress = 9338\n');
      expect(() => loadConfig(file, false)).toThrow(/metrics\.address: expected string/);
      fs.writeFileSync(file, 'version = 1\n[metrics]\naddress = "127.0.0.1:9338"\nport = 1\n');
      expect(() => loadConfig(file, false)).toThrow(/unknown key metrics\.port/);
      fs.writeFileSync(file, 'version = 1\n[metrics]\naddress = "127.0.0.1:9338"\n');
      expect(loadConfig(file, false).metrics.address).toBe('127.0.0.1:9338');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('DaemonMetrics', () => {
  test('observers land in their series; label values are the fixed ones given', async () => {
    const m = new DaemonMetrics();
    m.sandboxes.started('vm', 'spare', 0.06);
    m.sandboxes.started('vm', 'clone', 0.4);
    m.sandboxes.started('vm', 'cold', 7);
    m.sandboxes.failed('vm');
    m.grpcCall('RunPodSandbox', 'OK', 0.4);
    m.grpcCall('ContainerStatus', 'NOT_FOUND', 0.001);
    m.pulls.pulled(1.5, 'ok');
    m.pulls.pulled(0.2, 'unavailable');
    m.pulls.fetched(1000);
    m.pulls.fetched(24);
    m.agentCalls('container.start', 0.02);
    m.agentCalls('container.start', 0.03, 'not_found');
    const t = await m.text();
    expect(sample(t, 'podvisor_pod_start_duration_seconds_count', { backend: 'vm', path: 'spare' })).toBe(1);
    expect(sample(t, 'podvisor_pod_start_duration_seconds_bucket', { backend: 'vm', path: 'spare', le: '0.1' })).toBe(1);
    expect(sample(t, 'podvisor_pod_start_duration_seconds_bucket', { backend: 'vm', path: 'spare', le: '0.05' })).toBe(0);
    expect(sample(t, 'podvisor_pod_start_duration_seconds_sum', { backend: 'vm', path: 'cold' })).toBe(7);
    expect(sample(t, 'podvisor_pod_start_failures_total', { backend: 'vm' })).toBe(1);
    expect(sample(t, 'podvisor_grpc_requests_total', { method: 'ContainerStatus', code: 'NOT_FOUND' })).toBe(1);
    expect(sample(t, 'podvisor_grpc_request_duration_seconds_count', { method: 'RunPodSandbox' })).toBe(1);
    expect(sample(t, 'podvisor_image_pull_duration_seconds_count', { outcome: 'ok' })).toBe(1);
    expect(sample(t, 'podvisor_image_pull_duration_seconds_count', { outcome: 'unavailable' })).toBe(1);
    expect(sample(t, 'podvisor_image_pull_bytes_total')).toBe(1024);
    expect(sample(t, 'podvisor_agent_rpc_duration_seconds_count', { method: 'container.start' })).toBe(2);
    expect(sample(t, 'podvisor_agent_rpc_errors_total', { method: 'container.start', code: 'not_found' })).toBe(1);
    expect(t).toMatch(/^# TYPE podvisor_pod_start_duration_seconds histogram$/m);
    expect(t).toMatch(/^process_cpu_user_seconds_total /m); // the process' own figures
  });

  test('gauges are read from their sources at scrape time; nothing before the sources exist', async () => {
    const m = new DaemonMetrics();
    const empty = await m.text();
    expect(sample(empty, 'podvisor_pods_running', { backend: 'vm' })).toBeUndefined();
    const events = new EventStreamStats();
    let running: Record<string, number> = { vm: 2 };
    const sources: MetricSources = {
      backends: ['vm', 'host'],
      podsRunning: () => running,
      containers: () => ({ CONTAINER_RUNNING: 3, CONTAINER_EXITED: 1 }),
      pool: () => ({ vms: { cold: 1, clone: 4, template: 0, restore: 0 }, templates: 2, templateBuilds: 1, spares: 1 }),
      events,
    };
    m.setSources(sources);
    events.subscribers = 2;
    events.cutOff = 1;
    events.dropped = 7;
    let t = await m.text();
    expect(sample(t, 'podvisor_pods_running', { backend: 'vm' })).toBe(2);
    expect(sample(t, 'podvisor_pods_running', { backend: 'host' })).toBe(0);
    expect(sample(t, 'podvisor_containers', { state: 'CONTAINER_RUNNING' })).toBe(3);
    expect(sample(t, 'podvisor_containers', { state: 'CONTAINER_CREATED' })).toBe(0);
    expect(sample(t, 'podvisor_vms_running', { origin: 'clone' })).toBe(4);
    expect(sample(t, 'podvisor_vm_templates')).toBe(2);
    expect(sample(t, 'podvisor_vm_template_builds')).toBe(1);
    expect(sample(t, 'podvisor_vm_spares_ready')).toBe(1);
    expect(sample(t, 'podvisor_container_event_subscribers')).toBe(2);
    expect(sample(t, 'podvisor_container_event_streams_cut_total')).toBe(1);
    expect(sample(t, 'podvisor_container_events_dropped_total')).toBe(7);
    expect(t).toMatch(/^# TYPE podvisor_container_events_dropped_total counter$/m);
    running = {};
    events.dropped = 9;
    t = await m.text();
    expect(sample(t, 'podvisor_pods_running', { backend: 'vm' })).toBe(0);
    expect(sample(t, 'podvisor_container_events_dropped_total')).toBe(9);
  });
});

describe('AgentClient observer', () => {
  test('every request is timed by method; failures carry the family code, not the guest\'s', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-agent-obs-'));
    const sock = path.join(dir, 'a.sock');
    const seen: Array<[string, number, string | undefined]> = [];
    let peer!: net.Socket;
    const server = net.createServer((s) => (peer = s)).listen(sock);
    const client = await AgentClient.connect(sock, 2000, (method, seconds, code) => seen.push([method, seconds, code]));
    try {
      await new Promise((r) => setTimeout(r, 50));
      // the guest answers each request: ok, an error with a code of its own, nothing at all
      // frames: u32 length (of what follows), u8 kind, u32 id, JSON payload
      let buf = Buffer.alloc(0);
      peer.on('data', (c) => {
        buf = Buffer.concat([buf, c]);
        while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
          const len = buf.readUInt32BE(0);
          const id = buf.readUInt32BE(5);
          const { method } = JSON.parse(buf.subarray(9, 4 + len).toString());
          buf = buf.subarray(4 + len);
          if (method === 'ok') peer.write(encodeJson(Kind.Resp, id, { result: {} }));
          if (method === 'odd') peer.write(encodeJson(Kind.Resp, id, { error: { code: 'made-up-by-the-guest', message: 'x' } }));
        }
      });
      await client.request('ok', {});
      await expect(client.request('odd', {})).rejects.toMatchObject({ code: 'internal', agentCode: 'made-up-by-the-guest' });
      await expect(client.request('silent', {}, 50)).rejects.toMatchObject({ code: 'deadline_exceeded' });
      client.close();
      await expect(client.request('after-close', {})).rejects.toMatchObject({ code: 'unavailable' });
      expect(seen.map(([m, , c]) => [m, c])).toEqual([['ok', undefined], ['odd', 'internal'], ['silent', 'deadline_exceeded'], ['after-close', 'unavailable']]);
      expect(seen[2][1]).toBeGreaterThanOrEqual(0.04);
    } finally {
      client.close();
      peer?.destroy();
      server.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('the endpoint', () => {
  test('GET /metrics serves the text format; other paths 404, other methods 405; close() frees the port', async () => {
    const m = new DaemonMetrics();
    m.grpcCall('Version', 'OK', 0.001);
    const ep = await serveMetrics(m, '127.0.0.1', 0, silentLogger);
    const base = `http://${ep.address}`;
    try {
      const res = await fetch(`${base}/metrics`);
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
      expect(sample(await res.text(), 'podvisor_grpc_requests_total', { method: 'Version', code: 'OK' })).toBe(1);
      expect((await fetch(`${base}/`)).status).toBe(404);
      expect((await fetch(`${base}/metrics`, { method: 'POST', body: 'x' })).status).toBe(405);
    } finally {
      await ep.close();
    }
    await expect(fetch(`${base}/metrics`)).rejects.toThrow();
  });

  test('an address in use is refused, naming the address and the config key', async () => {
    const blocker = net.createServer().listen(0, '127.0.0.1');
    await new Promise((r) => blocker.once('listening', r));
    const port = (blocker.address() as net.AddressInfo).port;
    try {
      await expect(serveMetrics(new DaemonMetrics(), '127.0.0.1', port, silentLogger)).rejects.toThrow(`cannot serve metrics on 127.0.0.1:${port} ([metrics] address): EADDRINUSE`);
    } finally {
      blocker.close();
    }
  });
});
