// Pod networking end to end: Debian's CNI plugins (bridge, host-local, portmap, loopback), the
// pod netns, the tap mirrored into the VM, and the guest configured by the agent.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { netnsNameFor } from '../network/network-driver';
import { startBusyboxDaemon, type BusyboxDaemon } from './support/busybox';
import { useBridgeNetwork } from './support/cni';
import { claimRunNetwork, type RunNetwork } from './support/netpool';
import { execSync } from './support/containers';
import { podConfig, retry, type TestDaemon } from './support/daemon';

jest.setTimeout(300_000);

// this run's own bridge, /24 and host ports (another slot may run this file at the same time)
let net: RunNetwork | undefined;
let BRIDGE: string;
let SUBNET: string;
let WEB_PORT: number;
let CYCLE_PORTS: number;
let setup: BusyboxDaemon | undefined;
let d: TestDaemon;
let image: string;
let ipamDir: string;

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8' });
}

function httpGet(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { timeout: 10_000 }, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve(body));
    });
    req.on('timeout', () => req.destroy(new Error(`timeout: ${url}`)));
    req.on('error', reject);
  });
}


beforeAll(async () => {
  setup = await startBusyboxDaemon({}, { pull: false, extra: [{ name: 'www/', type: 'directory' }, { name: 'www/index.html', content: 'hello from the pod\n' }] });
  ({ d, image } = setup);
  net = await claimRunNetwork('pve2e');
  ({ bridge: BRIDGE, subnet: SUBNET } = net);
  WEB_PORT = 18080 + net.index;
  CYCLE_PORTS = 19000 + 20 * net.index;
  ipamDir = await useBridgeNetwork(d, { name: 'e2e', bridge: BRIDGE, subnet: SUBNET, routed: true });
  await d.image('PullImage', { image: { image } });
});

afterAll(async () => {
  await setup?.close();
  try { if (BRIDGE) sh('ip', ['link', 'del', BRIDGE]); } catch { /* already gone */ }
  await net?.release();
});

async function podWithServer(name: string, extra: Record<string, unknown> = {}): Promise<{ pod: string; ip: string; ctr: string }> {
  const cfg = podConfig(name, path.join(d.logs, name), extra);
  const pod = (await d.runtime('RunPodSandbox', { config: cfg })).pod_sandbox_id;
  const st = await d.runtime('PodSandboxStatus', { pod_sandbox_id: pod });
  const { container_id } = await d.runtime('CreateContainer', {
    pod_sandbox_id: pod,
    config: { metadata: { name: 'web' }, image: { image }, command: ['/bin/busybox', 'httpd', '-f', '-p', '8080', '-h', '/www'], linux: { security_context: { namespace_options: { pid: 'CONTAINER' } } } },
    sandbox_config: cfg,
  });
  await d.runtime('StartContainer', { container_id });
  return { pod, ip: st.status.network.ip, ctr: container_id };
}

const exec = (ctr: string, cmd: string[]) => execSync(d, ctr, cmd);

/** The daemon's one ready spare VM: its directory name and the netns holding its taps. */
async function readySpare(): Promise<{ name: string; netns: string }> {
  const spares = path.join(d.state, 'spares');
  const name = await retry(async () => {
    const ready = fs.readdirSync(spares).filter((s) => fs.existsSync(path.join(spares, s, 'ready')));
    expect(ready).toHaveLength(1);
    return ready[0];
  }, 60_000);
  const suffix = `-${name.slice('spare-'.length)}`;
  const netns = sh('ip', ['netns', 'list']).split('\n').map((l) => l.split(' ')[0]).find((n) => n.startsWith('pvsp-') && n.endsWith(suffix));
  if (!netns) throw new Error(`no netns for spare ${name}`);
  return { name, netns };
}

describe('pods on a CNI bridge', () => {
  let a: { pod: string; ip: string; ctr: string };
  let b: { pod: string; ip: string; ctr: string };

  beforeAll(async () => {
    a = await podWithServer('net-a', {
      port_mappings: [{ protocol: 'TCP', container_port: 8080, host_port: WEB_PORT, host_ip: '' }],
      dns_config: { servers: [`${SUBNET}.53`], searches: ['e2e.example'], options: ['ndots:2'] },
    });
    b = await podWithServer('net-b');
  });

  it('reports the pod IP from the CNI result', () => {
    expect(a.ip).toMatch(new RegExp(`^${SUBNET.replace(/\./g, '\\.')}\\.\\d+$`));
    expect(b.ip).not.toBe(a.ip);
  });

  it('serves a TCP server in a container to a client in the host namespace', async () => {
    expect(await retry(() => httpGet(`http://${a.ip}:8080/index.html`))).toBe('hello from the pod\n');
  });

  it('lets two pod VMs reach each other', async () => {
    const r = await retry(async () => {
      const res = await exec(a.ctr, ['/bin/busybox', 'wget', '-q', '-O', '-', `http://${b.ip}:8080/index.html`]);
      if (res.code !== 0) throw new Error(`wget exit ${res.code}`);
      return res;
    });
    expect(r.out).toBe('hello from the pod\n');
  });

  it("counts the pod's traffic in its network metrics (cAdvisor's, per guest NIC)", async () => {
    const bytes = async () => {
      const { pod_metrics } = await d.runtime('ListPodSandboxMetrics', {});
      const pm = pod_metrics.find((x: any) => x.pod_sandbox_id === a.pod);
      const rx = pm.metrics.find((m: any) => m.name === 'container_network_receive_bytes_total' && m.label_values[3] === 'eth0');
      const tx = pm.metrics.find((m: any) => m.name === 'container_network_transmit_bytes_total' && m.label_values[3] === 'eth0');
      expect(rx.label_values.slice(0, 3)).toEqual([a.pod, 'POD', '']);
      return { rx: Number(rx.value.value), tx: Number(tx.value.value) };
    };
    const before = await bytes();
    const page = await retry(() => httpGet(`http://${a.ip}:8080/index.html`));
    const after = await bytes();
    expect(after.rx).toBeGreaterThan(before.rx); // the request came in
    expect(after.tx).toBeGreaterThanOrEqual(before.tx + page.length); // the page went out
  });

  it('puts a pod started from a warm spare VM on the network like any other', async () => {
    const spare = await readySpare();
    const c = await podWithServer('net-spare');
    try {
      const info = JSON.parse((await d.runtime('PodSandboxStatus', { pod_sandbox_id: c.pod, verbose: true })).info.info);
      expect(info.vm.spare).toBe(true);
      expect(c.ip).toMatch(new RegExp(`^${SUBNET.replace(/\./g, '\\.')}\\.\\d+$`));
      expect(await retry(() => httpGet(`http://${c.ip}:8080/index.html`))).toBe('hello from the pod\n');
      const r = await retry(async () => {
        const res = await exec(c.ctr, ['/bin/busybox', 'wget', '-q', '-O', '-', `http://${a.ip}:8080/index.html`]);
        if (res.code !== 0) throw new Error(`wget exit ${res.code}`);
        return res;
      });
      expect(r.out).toBe('hello from the pod\n');
      // the spare's netns, with its tap, became the pod netns: the spare's name is gone
      const netns = sh('ip', ['netns', 'list']);
      expect(netns).toContain(`pv-${c.pod.slice(0, 16)}`);
      expect(netns).not.toContain(spare.netns);
      expect(sh('ip', ['-n', `pv-${c.pod.slice(0, 16)}`, '-o', 'link', 'show', 'type', 'tun'])).toMatch(/tap0/);
    } finally {
      await d.runtime('RemovePodSandbox', { pod_sandbox_id: c.pod });
    }
  });

  it('starts the pod on a fresh clone when the spare cannot be taken (its netns is gone)', async () => {
    const spare = await readySpare();
    sh('ip', ['netns', 'delete', spare.netns]);
    const c = await podWithServer('net-nospare');
    try {
      const info = JSON.parse((await d.runtime('PodSandboxStatus', { pod_sandbox_id: c.pod, verbose: true })).info.info);
      expect(info.vm.boot).toBe('clone');
      expect(info.vm.spare).toBeFalsy();
      expect(await retry(() => httpGet(`http://${c.ip}:8080/index.html`))).toBe('hello from the pod\n');
      // the spare that failed is gone, files and QEMU
      expect(fs.existsSync(path.join(d.state, 'spares', spare.name))).toBe(false);
      expect(sh('ps', ['-eo', 'args']).split('\n').filter((l) => l.includes('qemu-system') && l.includes(spare.name))).toEqual([]);
    } finally {
      await d.runtime('RemovePodSandbox', { pod_sandbox_id: c.pod });
    }
  });

  it('maps a hostPort to the pod', async () => {
    expect(await retry(() => httpGet(`http://${SUBNET}.1:${WEB_PORT}/index.html`))).toBe('hello from the pod\n');
  });

  it('puts the pod DNS config into /etc/resolv.conf', async () => {
    const r = await exec(a.ctr, ['/bin/cat', '/etc/resolv.conf']);
    expect(r.out).toContain(`nameserver ${SUBNET}.53`);
    expect(r.out).toContain('search e2e.example');
    expect(r.out).toContain('options ndots:2');
  });

  afterAll(async () => {
    for (const p of [a, b]) if (p) await d.runtime('RemovePodSandbox', { pod_sandbox_id: p.pod });
  });
});

describe('network cleanup', () => {
  it('leaves no netns, link, tc filter, iptables rule or IPAM lease after 20 run/stop/remove cycles', async () => {
    const ports = () => {
      try {
        return sh('ip', ['-o', 'link', 'show', 'master', BRIDGE]).split('\n').filter(Boolean);
      } catch {
        return []; // no bridge yet: CNI creates it with the first pod
      }
    };
    const portsBefore = ports();
    // this daemon's pod namespaces only: another run on the machine makes and drops its own
    const netnsNames = () => sh('ip', ['netns', 'list']).split('\n').map((l) => l.split(' ')[0]);
    const ours = new Set<string>();
    for (let i = 0; i < 20; i++) {
      const cfg = podConfig(`cycle-${i}`, path.join(d.logs, 'cycles'), { port_mappings: [{ protocol: 'TCP', container_port: 80, host_port: CYCLE_PORTS + i, host_ip: '' }] });
      const pod = (await d.runtime('RunPodSandbox', { config: cfg })).pod_sandbox_id;
      ours.add(netnsNameFor(pod));
      expect(netnsNames()).toContain(netnsNameFor(pod)); // so the check after the loop can fail
      expect((await d.runtime('PodSandboxStatus', { pod_sandbox_id: pod })).status.network.ip).toBeTruthy();
      await d.runtime('StopPodSandbox', { pod_sandbox_id: pod });
      await d.runtime('RemovePodSandbox', { pod_sandbox_id: pod });
    }
    expect(netnsNames().filter((n) => ours.has(n))).toEqual([]);
    expect(ports()).toEqual(portsBefore); // every pod's veth left the bridge with its netns
    const leases = fs.existsSync(path.join(ipamDir, 'e2e')) ? fs.readdirSync(path.join(ipamDir, 'e2e')).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f)) : [];
    expect(leases).toEqual([]);
    // this run's host ports only: another slot's run of this file has its own
    const nat = sh('iptables-save', ['-t', 'nat']);
    expect(Array.from({ length: 20 }, (_, i) => CYCLE_PORTS + i).filter((p) => new RegExp(`(^|\\D)${p}(\\D|$)`, 'm').test(nat))).toEqual([]);
  });
});
