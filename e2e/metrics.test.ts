// The metrics endpoint of a real daemon, scraped over HTTP around real pod lifecycles: a pod
// cloned from a template, one that takes a warm spare, one cold-booted (templates off), each
// counted and its start in the histogram under its path; the image pull, the guest agent
// calls and the CRI calls they made. Off by default (the daemon listens on no new port); a bad
// or taken address stops the daemon with a clear message before it starts any VM.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { freePort } from '../test/support/registry';
import { sample } from '../test/support/prometheus';
import { startBusyboxDaemon, type BusyboxDaemon } from './support/busybox';
import { podConfig, qemuPidsUnder, retry, TestDaemon } from './support/daemon';

jest.setTimeout(300_000);

const CLI = path.join(__dirname, '..', 'dist', 'src', 'cli', 'main.js');

async function scrape(address: string): Promise<string> {
  const res = await fetch(`http://${address}/metrics`);
  expect(res.status).toBe(200);
  return res.text();
}

/** TCP ports process `pid` listens on (ss, as an operator would look). */
function listeningPorts(pid: number): number[] {
  const out = execFileSync('ss', ['-Hltnp'], { encoding: 'utf8' });
  return out.split('\n').filter((l) => l.includes(`pid=${pid},`)).map((l) => {
    const local = l.split(/\s+/)[3];
    return Number(local.slice(local.lastIndexOf(':') + 1));
  });
}

/** The port of the daemon's streaming server, from its latest start's log line. */
function streamingPort(d: TestDaemon): number {
  const urls = [...fs.readFileSync(path.join(d.dir, 'daemon.log'), 'utf8').matchAll(/"url":"http:\/\/127\.0\.0\.1:(\d+)","msg":"streaming server listening"/g)];
  return Number(urls[urls.length - 1][1]);
}

describe('metrics endpoint of a daemon with templates (clone and spare paths)', () => {
  let setup: BusyboxDaemon | undefined;
  let d: TestDaemon;
  let image: string;
  let address: string;

  beforeAll(async () => {
    address = `127.0.0.1:${await freePort()}`;
    // the test pulls itself: the pull is one of the things it counts
    setup = await startBusyboxDaemon({ templates: true, configToml: `[metrics]\naddress = "${address}"\n` }, { pull: false });
    ({ d, image } = setup);
  });

  afterAll(() => setup?.close());

  test('a pull, a cloned pod with a container, a pod on a warm spare: counted, timed, labelled by path', async () => {
    const before = await scrape(address);
    expect(sample(before, 'podvisor_pods_running', { backend: 'vm' })).toBe(0);
    expect(sample(before, 'podvisor_pod_start_duration_seconds_count', { backend: 'vm', path: 'clone' })).toBeUndefined();
    expect(sample(before, 'podvisor_grpc_requests_total', { method: 'Version', code: 'OK' })).toBeGreaterThanOrEqual(1); // TestDaemon's readiness call

    await d.image('PullImage', { image: { image } });
    const pulled = await scrape(address);
    expect(sample(pulled, 'podvisor_image_pull_duration_seconds_count', { outcome: 'ok' })).toBe(1);
    expect(sample(pulled, 'podvisor_image_pull_bytes_total')).toBeGreaterThan(100_000); // busybox's layer
    expect(sample(pulled, 'podvisor_grpc_requests_total', { method: 'PullImage', code: 'OK' })).toBe(1);

    // first pod of its size class: the template is built, the pod is a clone of it
    const cfgA = podConfig('metrics-a', path.join(d.logs, 'metrics-a'));
    const a = (await d.runtime('RunPodSandbox', { config: cfgA })).pod_sandbox_id;
    const { container_id } = await d.runtime('CreateContainer', {
      pod_sandbox_id: a,
      config: { metadata: { name: 'sleeper' }, image: { image }, command: ['/bin/sleep', '3600'] },
      sandbox_config: cfgA,
    });
    await d.runtime('StartContainer', { container_id });
    await expect(d.runtime('ContainerStatus', { container_id: 'no-such-container' })).rejects.toMatchObject({ code: 5 });
    const one = await scrape(address);
    expect(sample(one, 'podvisor_pods_running', { backend: 'vm' })).toBe(1);
    expect(sample(one, 'podvisor_containers', { state: 'CONTAINER_RUNNING' })).toBe(1);
    expect(sample(one, 'podvisor_pod_start_duration_seconds_count', { backend: 'vm', path: 'clone' })).toBe(1);
    const startS = sample(one, 'podvisor_pod_start_duration_seconds_sum', { backend: 'vm', path: 'clone' })!;
    expect(startS).toBeGreaterThan(0);
    expect(startS).toBeLessThan(300);
    expect(sample(one, 'podvisor_pod_start_duration_seconds_bucket', { backend: 'vm', path: 'clone', le: '+Inf' })).toBe(1);
    expect(sample(one, 'podvisor_vm_templates')).toBe(1);
    expect(sample(one, 'podvisor_vms_running', { origin: 'clone' })).toBeGreaterThanOrEqual(1);
    expect(sample(one, 'podvisor_vms_running', { origin: 'cold' })).toBe(0);
    expect(sample(one, 'podvisor_agent_rpc_duration_seconds_count', { method: 'hello' })).toBeGreaterThanOrEqual(2); // template + pod
    expect(sample(one, 'podvisor_agent_rpc_duration_seconds_count', { method: 'container.create' })).toBe(1);
    expect(sample(one, 'podvisor_agent_rpc_duration_seconds_count', { method: 'container.start' })).toBe(1);
    expect(sample(one, 'podvisor_grpc_requests_total', { method: 'RunPodSandbox', code: 'OK' })).toBe(1);
    expect(sample(one, 'podvisor_grpc_requests_total', { method: 'ContainerStatus', code: 'NOT_FOUND' })).toBe(1);

    // the spare made behind pod a is taken by pod b
    await retry(async () => expect(sample(await scrape(address), 'podvisor_vm_spares_ready')).toBe(1), 120_000, 500);
    const b = (await d.runtime('RunPodSandbox', { config: podConfig('metrics-b', path.join(d.logs, 'metrics-b')) })).pod_sandbox_id;
    const info = JSON.parse((await d.runtime('PodSandboxStatus', { pod_sandbox_id: b, verbose: true })).info.info);
    expect(info.vm.spare).toBe(true);
    const two = await scrape(address);
    expect(sample(two, 'podvisor_pods_running', { backend: 'vm' })).toBe(2);
    expect(sample(two, 'podvisor_pod_start_duration_seconds_count', { backend: 'vm', path: 'spare' })).toBe(1);
    expect(sample(two, 'podvisor_pod_start_duration_seconds_count', { backend: 'vm', path: 'clone' })).toBe(1);

    for (const id of [a, b]) {
      await d.runtime('StopPodSandbox', { pod_sandbox_id: id });
      await d.runtime('RemovePodSandbox', { pod_sandbox_id: id });
    }
    const gone = await scrape(address);
    expect(sample(gone, 'podvisor_pods_running', { backend: 'vm' })).toBe(0);
    expect(sample(gone, 'podvisor_containers', { state: 'CONTAINER_RUNNING' })).toBe(0);
    expect(sample(gone, 'podvisor_grpc_requests_total', { method: 'RemovePodSandbox', code: 'OK' })).toBe(2);
    expect(sample(gone, 'podvisor_agent_rpc_errors_total', { method: 'container.start', code: 'internal' })).toBeUndefined();
  });

  test('container event streams: subscribers counted while open', async () => {
    const c = d.newRuntimeClient() as any;
    const stream = c.GetContainerEvents({});
    stream.on('error', () => undefined);
    try {
      await retry(async () => expect(sample(await scrape(address), 'podvisor_container_event_subscribers')).toBe(1), 10_000, 100);
    } finally {
      stream.cancel();
      c.close();
    }
    await retry(async () => expect(sample(await scrape(address), 'podvisor_container_event_subscribers')).toBe(0), 10_000, 100);
    const t = await scrape(address);
    expect(sample(t, 'podvisor_container_event_streams_cut_total')).toBe(0);
    expect(sample(t, 'podvisor_grpc_requests_total', { method: 'GetContainerEvents', code: 'CANCELLED' })).toBe(1);
  });
});

describe('off by default, cold boot path, bad addresses', () => {
  let d: TestDaemon;

  afterAll(async () => {
    await d?.destroy();
  });

  test('without [metrics] the daemon listens on no port but its streaming server; with it, a cold-booted pod is timed under path="cold"', async () => {
    d = await TestDaemon.start({ templates: false });
    // its one TCP listener is the streaming server (exec/attach/port-forward); the image build's
    // warm-up serves itself a layer on a loopback port for a moment after start (image/warm-up.ts)
    await retry(async () => expect(listeningPorts(d.pid!)).toEqual([streamingPort(d)]), 30_000, 200);
    await d.stopProcess();
    const address = `127.0.0.1:${await freePort()}`;
    fs.appendFileSync(d.configFile, `[metrics]\naddress = "${address}"\n`);
    await d.launch();
    await retry(async () => expect(listeningPorts(d.pid!).sort()).toEqual([streamingPort(d), Number(address.split(':')[1])].sort()), 30_000, 200);
    const id = (await d.runtime('RunPodSandbox', { config: podConfig('metrics-cold', path.join(d.logs, 'metrics-cold')) })).pod_sandbox_id;
    const t = await scrape(address);
    expect(sample(t, 'podvisor_pod_start_duration_seconds_count', { backend: 'vm', path: 'cold' })).toBe(1);
    expect(sample(t, 'podvisor_pods_running', { backend: 'vm' })).toBe(1);
    expect(sample(t, 'podvisor_vms_running', { origin: 'cold' })).toBe(1);
    expect(sample(t, 'podvisor_vm_templates')).toBe(0);
    expect(sample(t, 'podvisor_vm_spares_ready')).toBe(0);
    await d.runtime('RemovePodSandbox', { pod_sandbox_id: id });
  });

  test('a malformed address is a config error (exit 2) saying what is expected', async () => {
    const r = await serveOnce('[metrics]\naddress = "localhost"\n');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^podvisor: \S+config\.toml: metrics\.address = "localhost": no port \(expected host:port such as "127\.0\.0\.1:9338"/);
  });

  test('an address in use stops the daemon before any VM starts (a template prebuild was due), naming the address', async () => {
    const blocker = net.createServer().listen(0, '127.0.0.1');
    await new Promise((r) => blocker.once('listening', r));
    const port = (blocker.address() as net.AddressInfo).port;
    try {
      const r = await serveOnce(`[vm]\naccelerator = "tcg"\ntemplate = true\nprebuild_templates = ["1x256"]\n[metrics]\naddress = "127.0.0.1:${port}"\n`);
      expect(r.code).toBe(1);
      const fatal = r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l)).find((l) => l.level === 60);
      expect(fatal.msg).toBe('cannot start');
      expect(fatal.err.message).toBe(`cannot serve metrics on 127.0.0.1:${port} ([metrics] address): EADDRINUSE`);
      expect(r.leftQemu).toEqual([]);
      expect(r.stdout).not.toMatch(/VM started/);
    } finally {
      blocker.close();
    }
  });
});

/** Runs `podvisor serve` once in a scratch dir with `toml` as its config, until it exits (60 s at most). */
async function serveOnce(toml: string): Promise<{ code: number | null; stdout: string; stderr: string; leftQemu: number[] }> {
  const dir = fs.mkdtempSync('/tmp/pv-metrics-');
  try {
    const config = path.join(dir, 'config.toml');
    // templates (when [vm] is there) in the scratch dir, not the host's /dev/shm
    fs.writeFileSync(config, toml.replace('[vm]\n', `[vm]\ntemplate_dir = "${dir}/templates"\n`));
    const proc = spawn(process.execPath, [CLI, 'serve', '--config', config, '--socket', path.join(dir, 'cri.sock'), '--root', path.join(dir, 'root'), '--state', path.join(dir, 'state')], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    proc.stdout!.on('data', (b) => (stdout += b));
    proc.stderr!.on('data', (b) => (stderr += b));
    const code = await new Promise<number | null>((resolve) => {
      const t = setTimeout(() => proc.kill('SIGKILL'), 60_000);
      proc.once('exit', (c) => { clearTimeout(t); resolve(c); });
    });
    const leftQemu = qemuPidsUnder(dir);
    for (const pid of leftQemu) process.kill(pid, 'SIGKILL');
    return { code, stdout, stderr, leftQemu };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
