// A one-node Kubernetes on this machine whose only runtime is podvisor: etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler and kubelet (built by ../build.sh, cached outside the
// repository), certificates made per run, everything bound to 127.0.0.1 or to the node's /32 on
// lo. kubelet talks CRI to a podvisor daemon started here (e2e/support/daemon.ts) with a CNI
// bridge of its own; images come from a local registry under their upstream names (certs.d
// mirror). No kube-proxy, no CoreDNS: pod DNS points at an address where nothing answers and an
// iptables guard keeps pod traffic on the machine. `down()` undoes every host change
// (host.ts) and reports what it could not.
import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import * as k8s from '@kubernetes/client-node';
import { freePort, startRegistry, type Registry } from '../../../test/support/registry';
import { retry, TestDaemon } from '../../support/daemon';
import { HostChanges, KUBELET_SYSCTLS, mountsUnder, cgroupDirs } from './host';
import { IMAGES, pushClusterImages, UPSTREAM_REGISTRY } from './images';
import { ClusterLock } from './lock';
import { makePki, writeKubeconfig, type ClusterPki } from './pki';
import { Proc, until } from './procs';

const BUILD = path.resolve(__dirname, '..', 'build.sh');

export const NODE_NAME = 'podvisor-node';
/** the node's InternalIP: a /32 on lo */
export const NODE_IP = '172.31.254.1';
const SERVICE_CIDR = '10.96.0.0/24';
const SERVICE_IP = '10.96.0.1';
export const POD_SUBNET = '10.218.0';
export const POD_CIDR = `${POD_SUBNET}.0/24`;
/** pod DNS: an address on the pod subnet where nothing answers */
const POD_DNS = `${POD_SUBNET}.254`;
export const BRIDGE = 'pvk8s0';
export const CSI_DRIVER = 'csi.podvisor.dev';
const ROOT = path.resolve(__dirname, '..', '..', '..');
const GUARD_CHAIN = 'PV-K8S-GUARD';

export interface ClusterOptions {
  /** log progress lines to stderr */
  verbose?: boolean;
}

/** Runs build.sh (cold: ~8-9 min) and returns the bin directory. */
export function buildBinaries(verbose = false): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', [BUILD], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => {
      err += d;
      if (verbose) process.stderr.write(d);
    });
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(out.trim().split('\n').pop()!) : reject(new Error(`build.sh failed (${code}): ${err.slice(-4000)}`))));
  });
}

export class Cluster {
  readonly kc = new k8s.KubeConfig();
  readonly procs: Record<string, Proc> = {};
  registry?: Registry;
  daemon?: TestDaemon;
  pki?: ClusterPki;
  apiserverUrl = '';
  /** the admin kubeconfig (for kubectl by hand) */
  readonly kubeconfig: string;
  /** kubelet's --root-dir */
  readonly kubeletDir: string;
  readonly podLogsDir: string;
  /** kubelet's cgroupRoot (its pods' cgroups live below it in every hierarchy) */
  readonly cgroupRoot = `/podvisor-e2e-${crypto.randomBytes(3).toString('hex')}`;
  readonly timings: Record<string, number> = {};
  private readonly host = new HostChanges();
  private torn = false;

  private constructor(readonly dir: string, readonly binDir: string, private readonly opts: ClusterOptions, private readonly lock: ClusterLock) {
    this.kubeconfig = path.join(dir, 'admin.kubeconfig');
    this.kubeletDir = path.join(dir, 'kubelet');
    this.podLogsDir = path.join(dir, 'pod-logs');
  }

  /** Builds (or finds) the binaries and brings the whole cluster up; the node is Ready when it returns. */
  static async up(opts: ClusterOptions = {}): Promise<Cluster> {
    const t0 = Date.now();
    const binDir = await buildBinaries(opts.verbose);
    // one cluster per machine (they share the bridge, the node address and the guard chain)
    const lock = await ClusterLock.acquire(() => process.stderr.write('cluster: waiting for another cluster on this machine to end\n'));
    const c = new Cluster(fs.mkdtempSync('/tmp/pv-k8s-'), binDir, opts, lock);
    c.timings.build = Date.now() - t0;
    try {
      await c.start();
    } catch (err) {
      const problems = await c.down();
      if (problems.length) (err as Error).message += `\nteardown: ${problems.join('; ')}`;
      throw err;
    }
    c.timings.up = Date.now() - t0;
    return c;
  }

  private log(msg: string): void {
    if (this.opts.verbose) process.stderr.write(`cluster: ${msg}\n`);
  }

  private async timed<T>(what: string, fn: () => Promise<T>): Promise<T> {
    const t = Date.now();
    this.log(`${what}...`);
    try {
      return await fn();
    } finally {
      this.timings[what] = Date.now() - t;
    }
  }

  private bin(name: string): string {
    return path.join(this.binDir, name);
  }

  private spawn(name: string, args: string[]): Proc {
    const p = new Proc(name, this.bin(name), args, path.join(this.dir, 'logs', `${name}.log`));
    this.procs[name] = p;
    return p;
  }

  private async start(): Promise<void> {
    this.host.removeDir(this.dir);
    const [registry, pki] = await Promise.all([
      this.timed('registry', async () => {
        const r = await startRegistry();
        this.registry = r;
        await pushClusterImages(r, this.binDir);
        return r;
      }),
      (async () => makePki(path.join(this.dir, 'pki'), { nodeName: NODE_NAME, nodeIp: NODE_IP, serviceIp: SERVICE_IP }))(),
    ]);
    this.pki = pki;
    this.host.onTeardown('registry', () => registry.stop());

    // host network: the node address, the pod bridge (made here so test servers can join it
    // before any pod; the CNI bridge plugin adopts it), the guard
    // a bridge or node address already there is not ours (a run that did not clean up, or a
    // cluster started without the lock): refuse, and never delete what we did not make
    if (fs.existsSync(`/sys/class/net/${BRIDGE}`)) throw new Error(`bridge ${BRIDGE} already exists: another cluster, or one left behind (ip link del ${BRIDGE})`);
    this.host.addLoopbackAddress(NODE_IP);
    spawnChecked('ip', ['link', 'add', BRIDGE, 'type', 'bridge']);
    this.host.onTeardown(`bridge ${BRIDGE}`, () => {
      if (fs.existsSync(`/sys/class/net/${BRIDGE}`)) spawnQuiet('ip', ['link', 'del', BRIDGE]);
    });
    spawnChecked('ip', ['addr', 'add', `${POD_SUBNET}.1/24`, 'dev', BRIDGE]);
    spawnChecked('ip', ['link', 'set', BRIDGE, 'up']);
    this.host.addForwardGuard(GUARD_CHAIN, POD_CIDR);

    // what kubelet will leave on the host: undone after podvisor has removed the pod VMs (undo
    // steps run newest first, and podvisor's is registered next)
    this.host.removeDir(this.kubeletDir);
    this.host.removeLinksInto('/var/log/containers', this.podLogsDir);
    this.host.makeCgroupTree(this.cgroupRoot);
    this.host.removeNewKubeChains();
    this.host.saveSysctls(KUBELET_SYSCTLS);
    await this.timed('podvisor', () => this.startPodvisor(registry));
    await this.timed('etcd', () => this.startEtcd());
    await this.timed('apiserver', () => this.startApiserver());
    await this.timed('controllers', async () => {
      await Promise.all([this.startControllerManager(), this.startScheduler()]);
    });
    await this.timed('kubelet', () => this.startKubelet());
    await this.timed('csi', () => this.startCsi());
  }

  /**
   * podvisor's CSI node plugin on the host (deploy/csi/node.yaml runs it in a host pod, which a
   * VM-only node cannot run), registered with kubelet by the registrar build.sh makes (what
   * node-driver-registrar does), and deploy/csi/csidriver.yaml applied as it is.
   */
  private async startCsi(): Promise<void> {
    const d = this.daemon!;
    const pluginDir = path.join(this.kubeletDir, 'plugins', CSI_DRIVER);
    fs.mkdirSync(pluginDir, { recursive: true });
    const socket = path.join(pluginDir, 'csi.sock');
    this.procs['csi-node'] = new Proc('csi-node', process.execPath, [
      path.join(ROOT, 'dist', 'src', 'cli', 'main.js'), 'csi', '--mode=node', `--endpoint=unix://${socket}`,
      `--node-id=${NODE_NAME}`, `--root=${d.root}`,
    ], path.join(this.dir, 'logs', 'csi-node.log'));
    await until('CSI socket', () => {
      this.procs['csi-node'].assertRunning();
      if (!fs.existsSync(socket)) throw new Error('no socket yet');
    }, 30_000, 200);
    this.spawn('csi-registrar', [
      `--driver-name=${CSI_DRIVER}`, `--csi-endpoint=${socket}`,
      `--registration-socket=${path.join(this.kubeletDir, 'plugins_registry', `${CSI_DRIVER}-reg.sock`)}`,
    ]);
    const storage = this.kc.makeApiClient(k8s.StorageV1Api);
    const driver = k8s.loadYaml<k8s.V1CSIDriver>(fs.readFileSync(path.join(ROOT, 'deploy', 'csi', 'csidriver.yaml'), 'utf8'));
    await storage.createCSIDriver({ body: driver });
    await until('CSI driver registered on the node', async () => {
      this.procs['csi-registrar'].assertRunning();
      const n = await storage.readCSINode({ name: NODE_NAME });
      if (!n.spec.drivers.some((x) => x.name === CSI_DRIVER)) throw new Error(JSON.stringify(n.spec.drivers));
    }, 60_000, 1000);
  }

  private async startPodvisor(registry: Registry): Promise<void> {
    const mirror = `http://${registry.host}`;
    this.daemon = await TestDaemon.start({ registries: { [UPSTREAM_REGISTRY]: mirror } });
    const d = this.daemon;
    this.host.onTeardown('podvisor', () => d.destroy());
    fs.writeFileSync(path.join(d.cniConfDir, '10-k8s.conflist'), JSON.stringify({
      cniVersion: '1.0.0',
      name: 'pvk8s',
      plugins: [
        { type: 'bridge', bridge: BRIDGE, isGateway: true, ipMasq: false, hairpinMode: true,
          ipam: { type: 'host-local', ranges: [[{ subnet: POD_CIDR, rangeStart: `${POD_SUBNET}.10`, rangeEnd: `${POD_SUBNET}.200` }]], routes: [{ dst: '0.0.0.0/0' }], dataDir: path.join(d.dir, 'ipam') } },
        { type: 'portmap', capabilities: { portMappings: true } },
      ],
    }));
    await retry(async () => {
      const s = await d.runtime('Status', {});
      if (!s.status.conditions.find((x: any) => x.type === 'NetworkReady')?.status) throw new Error('podvisor network not ready');
    }, 60_000);
  }

  private async startEtcd(): Promise<void> {
    const [client, peer] = [await freePort(), await freePort()];
    const url = `http://127.0.0.1:${client}`;
    const p = this.spawn('etcd', [
      '--name', 'e2e', '--data-dir', path.join(this.dir, 'etcd'),
      '--listen-client-urls', url, '--advertise-client-urls', url,
      '--listen-peer-urls', `http://127.0.0.1:${peer}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${peer}`,
      '--initial-cluster', `e2e=http://127.0.0.1:${peer}`,
      '--unsafe-no-fsync', '--log-level', 'warn',
    ]);
    this.etcdUrl = url;
    await until('etcd health', async () => {
      p.assertRunning();
      const r = await fetch(`${url}/health`);
      const body = (await r.json()) as { health?: string };
      if (body.health !== 'true') throw new Error(JSON.stringify(body));
    }, 60_000, 200);
  }

  private etcdUrl = '';

  private async startApiserver(): Promise<void> {
    const pki = this.pki!;
    const port = await freePort();
    this.apiserverUrl = `https://127.0.0.1:${port}`;
    const p = this.spawn('kube-apiserver', [
      '--etcd-servers', this.etcdUrl,
      '--bind-address', '127.0.0.1', '--secure-port', String(port), '--advertise-address', NODE_IP,
      '--tls-cert-file', pki.apiserver.cert, '--tls-private-key-file', pki.apiserver.key,
      '--client-ca-file', pki.ca.cert,
      '--kubelet-client-certificate', pki.apiserverKubelet.cert, '--kubelet-client-key', pki.apiserverKubelet.key,
      '--kubelet-certificate-authority', pki.ca.cert, '--kubelet-preferred-address-types', 'InternalIP',
      '--service-account-issuer', 'https://kubernetes.default.svc.cluster.local',
      '--service-account-key-file', pki.saPub, '--service-account-signing-key-file', pki.saKey,
      '--service-cluster-ip-range', SERVICE_CIDR,
      '--authorization-mode', 'Node,RBAC',
      '--enable-admission-plugins', 'NodeRestriction',
      '--allow-privileged=true',
      '--profiling=false',
      '--v=1',
    ]);
    writeKubeconfig(this.kubeconfig, this.apiserverUrl, pki.ca.cert, pki.admin, 'admin');
    this.kc.loadFromFile(this.kubeconfig);
    // /readyz includes the RBAC bootstrap: the other components' roles exist once it says ok
    await until('kube-apiserver ready', async () => {
      p.assertRunning();
      const body = await this.apiGet('/readyz');
      if (body !== 'ok') throw new Error(body);
    }, 120_000, 500);
  }

  /** GET `path` on the API server as the admin: the body (throws unless 200). */
  apiGet(p: string): Promise<string> {
    const pki = this.pki!;
    return new Promise((resolve, reject) => {
      const req = https.get(`${this.apiserverUrl}${p}`, { ca: fs.readFileSync(pki.ca.cert), cert: fs.readFileSync(pki.admin.cert), key: fs.readFileSync(pki.admin.key), timeout: 10_000 }, (res) => {
        let body = '';
        res.on('data', (c) => (body += c));
        res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`${p}: ${res.statusCode} ${body.slice(0, 500)}`))));
      });
      req.on('timeout', () => req.destroy(new Error(`${p}: timeout`)));
      req.on('error', reject);
    });
  }

  private kubeconfigFor(name: string, user: { cert: string; key: string }): string {
    const f = path.join(this.dir, `${name}.kubeconfig`);
    writeKubeconfig(f, this.apiserverUrl, this.pki!.ca.cert, user, name);
    return f;
  }

  private async startControllerManager(): Promise<void> {
    const pki = this.pki!;
    const kubeconfig = this.kubeconfigFor('controller-manager', pki.controllerManager);
    this.spawn('kube-controller-manager', [
      '--kubeconfig', kubeconfig, '--authentication-kubeconfig', kubeconfig, '--authorization-kubeconfig', kubeconfig,
      '--bind-address', '127.0.0.1', '--secure-port', String(await freePort()),
      '--service-account-private-key-file', pki.saKey, '--root-ca-file', pki.ca.cert,
      '--use-service-account-credentials=true',
      '--cluster-signing-cert-file', pki.ca.cert, '--cluster-signing-key-file', pki.ca.key,
      '--service-cluster-ip-range', SERVICE_CIDR,
      '--leader-elect=false', '--profiling=false', '--v=1',
    ]);
  }

  private async startScheduler(): Promise<void> {
    const kubeconfig = this.kubeconfigFor('scheduler', this.pki!.scheduler);
    this.spawn('kube-scheduler', [
      '--kubeconfig', kubeconfig, '--authentication-kubeconfig', kubeconfig, '--authorization-kubeconfig', kubeconfig,
      '--bind-address', '127.0.0.1', '--secure-port', String(await freePort()),
      '--leader-elect=false', '--profiling=false', '--v=1',
    ]);
  }

  private async startKubelet(): Promise<void> {
    const pki = this.pki!;
    const d = this.daemon!;
    fs.mkdirSync(this.kubeletDir, { recursive: true });
    fs.mkdirSync(this.podLogsDir, { recursive: true });
    const config = path.join(this.dir, 'kubelet-config.yaml');
    const runtime = `unix://${d.socket}`;
    fs.writeFileSync(config, `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
failSwapOn: false
cgroupDriver: cgroupfs
cgroupRoot: ${this.cgroupRoot}
containerRuntimeEndpoint: ${runtime}
imageServiceEndpoint: ${runtime}
runtimeRequestTimeout: 4m
address: ${NODE_IP}
port: ${await freePort()}
readOnlyPort: 0
healthzPort: 0
tlsCertFile: ${pki.kubeletServing.cert}
tlsPrivateKeyFile: ${pki.kubeletServing.key}
authentication:
  anonymous: { enabled: false }
  webhook: { enabled: false }
  x509: { clientCAFile: ${pki.ca.cert} }
authorization: { mode: AlwaysAllow }
clusterDomain: cluster.local
clusterDNS: [${POD_DNS}]
resolvConf: ""
podLogsDir: ${this.podLogsDir}
serializeImagePulls: false
syncFrequency: 10s
maxPods: 40
evictionHard: { memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1% }
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
`);
    const p = this.spawn('kubelet', [
      '--config', config,
      '--kubeconfig', this.kubeconfigFor('kubelet', pki.kubelet),
      '--root-dir', this.kubeletDir,
      '--hostname-override', NODE_NAME, '--node-ip', NODE_IP,
      '--node-labels', 'podvisor.io/enabled=true,podvisor.dev/runtime=true',
      '--v=2',
    ]);
    const core = this.kc.makeApiClient(k8s.CoreV1Api);
    await until('node Ready', async () => {
      for (const x of Object.values(this.procs)) x.assertRunning();
      const node = await core.readNode({ name: NODE_NAME });
      const ready = node.status?.conditions?.find((x) => x.type === 'Ready');
      if (ready?.status !== 'True') throw new Error(`Ready=${ready?.status} ${ready?.message ?? ''}`);
      if (node.spec?.taints?.length) throw new Error(`taints ${JSON.stringify(node.spec.taints)}`);
    }, 180_000, 1000);
    // the default service account exists once the controller manager made it
    await until('default service account', () => core.readNamespacedServiceAccount({ name: 'default', namespace: 'default' }), 60_000, 500);
  }

  /**
   * Stops everything and undoes every host change; returns what could not be undone or was
   * found left behind (empty: the host is as it was).
   */
  async down(): Promise<string[]> {
    if (this.torn) return [];
    this.torn = true;
    // kubelet first (it would restart pods), then the control plane, etcd last
    for (const name of ['kubelet', 'kube-scheduler', 'kube-controller-manager', 'kube-apiserver', 'etcd']) await this.procs[name]?.stop();
    for (const p of Object.values(this.procs)) await p.stop();
    if (process.env.PV_KEEP_CLUSTER_LOGS) this.keepLogs(process.env.PV_KEEP_CLUSTER_LOGS);
    const problems = await this.host.restore();
    const left = [...problems, ...this.leftovers()];
    await this.lock.release();
    return left;
  }

  private keepLogs(to: string): void {
    fs.mkdirSync(to, { recursive: true });
    if (fs.existsSync(path.join(this.dir, 'logs'))) fs.cpSync(path.join(this.dir, 'logs'), to, { recursive: true });
    if (this.daemon) fs.copyFileSync(path.join(this.daemon.dir, 'daemon.log'), path.join(to, 'podvisor.log'));
  }

  /** What is still on the host after teardown. */
  leftovers(): string[] {
    const out: string[] = [];
    for (const [n, p] of Object.entries(this.procs)) if (p.running) out.push(`process ${n} still running`);
    if (this.daemon && fs.existsSync(this.daemon.state)) out.push(`podvisor state ${this.daemon.state}`);
    const m = mountsUnder(this.dir);
    if (m.length) out.push(`mounts: ${m.join(', ')}`);
    if (fs.existsSync(this.dir)) out.push(`dir ${this.dir}`);
    const cg = cgroupDirs(this.cgroupRoot);
    if (cg.length) out.push(`cgroups: ${cg.join(', ')}`);
    if (fs.existsSync(`/sys/class/net/${BRIDGE}`)) out.push(`bridge ${BRIDGE}`);
    return out;
  }
}

function spawnQuiet(cmd: string, args: string[]): void {
  spawnSync(cmd, args, { stdio: 'ignore' });
}

function spawnChecked(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
}

export { IMAGES };
