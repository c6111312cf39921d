// podvisor's OCI image as an operator makes and ships it: scripts/release.sh, then
// scripts/image.js (what `make image` runs) writes an OCI layout; it is checked blob by blob
// (digests, sizes, diff ids, media types, entrypoint, labels), pushed with skopeo to a local
// registry and read back from there; its root file system, unpacked, runs the release's CLI
// with nothing from the host (chroot), and its node installer (deploy/daemonset.yaml's
// command) installs the release into a node root, restarts the service only when the version
// changed, and uninstalls exactly what it put there. The node's systemctl is the one stand-in:
// HOST_EXEC records the commands instead of reaching the test machine's init. Then the
// manifests themselves (installer, cleanup, CSI node plugin) run as host pods on a podvisor
// daemon that pulled the image from the registry, and the CSI controller runs from the image
// against a real Ceph (librados/librbd are in the image).
import { ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import * as grpc from '@grpc/grpc-js';
import yaml from 'js-yaml';
import { DRIVER_NAME, loadCsi } from '../storage/csi/server';
import { DESCRIPTOR_FILE, loadSealKey, readDescriptor, sealDescriptor } from '../storage/descriptor';
import { CephCluster, cephAvailable, startCeph } from '../test/support/ceph';
import { readCriLog } from '../test/support/cri-log';
import { Registry, startRegistry } from '../test/support/registry';
import { podConfig, TestDaemon } from './support/daemon';

jest.setTimeout(600_000);

const CHECKOUT = path.resolve(__dirname, '..');
const VERSION: string = JSON.parse(fs.readFileSync(path.join(CHECKOUT, 'package.json'), 'utf8')).version;
const CHROOT = execFileSync('sh', ['-c', 'command -v chroot'], { encoding: 'utf8' }).trim(); // the chrooted PATH is the image's
const sha256 = (b: Buffer) => `sha256:${crypto.createHash('sha256').update(b).digest('hex')}`;

/** Every path under `dir`, relative, sorted. */
function tree(dir: string): string[] {
  return (fs.readdirSync(dir, { recursive: true }) as string[]).sort();
}

let work: string;
let layout: string;
let rootfs: string;
let registry: Registry | undefined;

beforeAll(() => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-image-e2e-'));
  layout = path.join(work, 'image');
  rootfs = path.join(work, 'rootfs');
  execFileSync('bash', [path.join(CHECKOUT, 'scripts', 'release.sh'), path.join(work, 'out')], { stdio: 'pipe', timeout: 300_000 });
  const printed = execFileSync(path.join(CHECKOUT, 'node_modules', '.bin', 'node'), [path.join(CHECKOUT, 'scripts', 'image.js'), path.join(work, 'out', `podvisor-${VERSION}`), layout], { encoding: 'utf8', timeout: 300_000 });
  expect(printed.trim()).toBe(`${layout}:${VERSION}`);
}, 620_000);

afterAll(async () => {
  await registry?.stop();
  fs.rmSync(work, { recursive: true, force: true });
});

const blob = (digest: string) => fs.readFileSync(path.join(layout, 'blobs', 'sha256', digest.replace(/^sha256:/, '')));

test('the OCI layout: one manifest tagged with the version, every blob matching its digest and size, diff ids of the unpacked layers', () => {
  expect(JSON.parse(fs.readFileSync(path.join(layout, 'oci-layout'), 'utf8'))).toEqual({ imageLayoutVersion: '1.0.0' });
  const index = JSON.parse(fs.readFileSync(path.join(layout, 'index.json'), 'utf8'));
  expect(index.manifests).toHaveLength(1);
  const top = index.manifests[0];
  expect(top).toMatchObject({ mediaType: 'application/vnd.oci.image.manifest.v1+json', annotations: { 'org.opencontainers.image.ref.name': VERSION }, platform: { os: 'linux', architecture: 'amd64' } });
  const manifestBytes = blob(top.digest);
  expect(sha256(manifestBytes)).toBe(top.digest);
  expect(manifestBytes.length).toBe(top.size);
  const manifest = JSON.parse(manifestBytes.toString());
  expect(manifest).toMatchObject({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json' });
  expect(manifest.config.mediaType).toBe('application/vnd.oci.image.config.v1+json');
  const configBytes = blob(manifest.config.digest);
  expect([sha256(configBytes), configBytes.length]).toEqual([manifest.config.digest, manifest.config.size]);
  const config = JSON.parse(configBytes.toString());
  expect(config).toMatchObject({ os: 'linux', architecture: 'amd64' });
  expect(config.config.Entrypoint).toEqual([`/release/podvisor-${VERSION}/bin/podvisor`]);
  expect(config.config.Labels['org.opencontainers.image.version']).toBe(VERSION);
  const release = JSON.parse(fs.readFileSync(path.join(work, 'out', `podvisor-${VERSION}`, 'lib', 'podvisor', VERSION, 'release.json'), 'utf8'));
  expect(config.config.Labels['org.opencontainers.image.revision']).toBe(release.commit);
  expect(manifest.layers).toHaveLength(2);
  expect(config.rootfs.diff_ids).toHaveLength(2);
  fs.mkdirSync(rootfs);
  manifest.layers.forEach((l: { mediaType: string; digest: string; size: number }, i: number) => {
    expect(l.mediaType).toBe('application/vnd.oci.image.layer.v1.tar+gzip');
    const gz = blob(l.digest);
    expect([sha256(gz), gz.length]).toEqual([l.digest, l.size]);
    const raw = zlib.gunzipSync(gz);
    expect(sha256(raw)).toBe(config.rootfs.diff_ids[i]);
    // unpacked in order as a runtime would (for the tests below)
    execFileSync('tar', ['-xf', '-', '-C', rootfs], { input: raw, maxBuffer: 1 << 30 });
  });
  // the release, whole, where the entrypoint and the installer look for it
  expect(tree(path.join(rootfs, 'release', `podvisor-${VERSION}`))).toEqual(tree(path.join(work, 'out', `podvisor-${VERSION}`)));
  // the DaemonSets' command is in the image
  for (const f of ['daemonset.yaml', 'uninstall.yaml']) {
    const ds = yaml.load(fs.readFileSync(path.join(CHECKOUT, 'deploy', f), 'utf8')) as any;
    const [c] = ds.spec.template.spec.containers;
    expect(c.image).toBe(`podvisor/podvisor:${VERSION}`);
    expect(fs.existsSync(path.join(rootfs, c.command[0]))).toBe(true);
    expect(fs.existsSync(path.join(rootfs, c.command[1]))).toBe(true);
  }
});

let pushing: Promise<Registry> | undefined;
/** The image pushed (once) to a local registry with skopeo, as `make image-push` does. */
function pushed(): Promise<Registry> {
  return (pushing ??= (async () => {
    registry = await startRegistry();
    execFileSync('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', `oci:${layout}:${VERSION}`, `docker://${registry.host}/podvisor/podvisor:${VERSION}`], { env: { ...process.env, HOME: work }, timeout: 300_000 });
    return registry;
  })());
}

test('pushed to a local registry with skopeo, the registry serves the same manifest', async () => {
  const registry = await pushed();
  const ref = `docker://${registry.host}/podvisor/podvisor:${VERSION}`;
  const top = JSON.parse(fs.readFileSync(path.join(layout, 'index.json'), 'utf8')).manifests[0];
  const res = await fetch(`${registry.url}/v2/podvisor/podvisor/manifests/${VERSION}`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
  expect(res.status).toBe(200);
  expect(res.headers.get('docker-content-digest')).toBe(top.digest);
  const inspected = JSON.parse(execFileSync('skopeo', ['inspect', '--tls-verify=false', ref], { encoding: 'utf8', env: { ...process.env, HOME: work } }));
  expect(inspected).toMatchObject({ Digest: top.digest, Labels: { 'org.opencontainers.image.version': VERSION } });
});

test("the image's root file system runs the release's CLI on its own (its Node, its C libraries, its shell)", () => {
  const r = spawnSync(CHROOT, [rootfs, `/release/podvisor-${VERSION}/bin/podvisor`, 'config', 'default'], { encoding: 'utf8', env: { PATH: '/bin' }, timeout: 60_000 });
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  expect(r.stdout).toMatch(/^version = 1$/m);
  expect(r.stdout).toMatch(/^\[metrics\]$/m);
});

describe('the node installer (node-install.sh in the image, chrooted, the node root at /host)', () => {
  let node: string;
  const execLog = () => (fs.existsSync(path.join(node, 'exec.log')) ? fs.readFileSync(path.join(node, 'exec.log'), 'utf8').trim().split('\n') : []);
  const run = (action: string) => {
    const r = spawnSync(CHROOT, [rootfs, '/bin/sh', '/installer/node-install.sh', action], {
      encoding: 'utf8', timeout: 120_000,
      env: { PATH: '/bin', HOST_ROOT: '/host', PREFIX: '/usr/local', HOST_EXEC: '/bin/sh /host/record' },
    });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    return r.stdout;
  };
  let before: string[];

  beforeAll(() => {
    node = path.join(rootfs, 'host');
    // a node with a few things of its own under /usr/local and /etc
    for (const d of ['usr/local/bin', 'usr/local/lib', 'etc/podvisor']) fs.mkdirSync(path.join(node, d), { recursive: true });
    fs.writeFileSync(path.join(node, 'usr/local/bin/other-tool'), 'x');
    fs.writeFileSync(path.join(node, 'etc/podvisor/config.toml'), 'version = 1\n# the operator\'s\n');
    fs.writeFileSync(path.join(node, 'record'), 'echo "$*" >> /host/exec.log\n');
    before = tree(node);
  });

  test('first install: the release under /usr/local, then daemon-reload, enable, restart', () => {
    expect(run('install')).toMatch(new RegExp(`podvisor ${VERSION.replace(/\./g, '\\.')} installed and \\(re\\)started\\n$`));
    const lib = path.join(node, 'usr/local/lib/podvisor');
    expect(fs.readlinkSync(path.join(lib, 'current'))).toBe(VERSION);
    expect(fs.existsSync(path.join(lib, VERSION, 'node'))).toBe(true);
    expect(fs.existsSync(path.join(node, 'usr/local/bin/podvisor'))).toBe(true);
    expect(fs.readFileSync(path.join(node, 'usr/local/lib/systemd/system/podvisor.service'), 'utf8')).toMatch(/^Type=notify$/m);
    expect(fs.readFileSync(path.join(node, 'etc/podvisor/config.toml'), 'utf8')).toContain('the operator\'s');
    expect(execLog()).toEqual(['systemctl daemon-reload', 'systemctl enable podvisor.service', 'systemctl restart podvisor.service']);
  });

  test('the same version again: nothing restarted', () => {
    expect(run('install')).toMatch(/is already installed: the service is left as it is/);
    expect(execLog()).toHaveLength(3);
  });

  test('an older version in place: upgraded, restarted once, the older kept beside it', () => {
    const lib = path.join(node, 'usr/local/lib/podvisor');
    fs.renameSync(path.join(lib, VERSION), path.join(lib, '0.0.9'));
    fs.rmSync(path.join(lib, 'current'));
    fs.symlinkSync('0.0.9', path.join(lib, 'current'));
    expect(run('install')).toMatch(/\(re\)started \(was 0\.0\.9\)\n$/);
    expect(fs.readlinkSync(path.join(lib, 'current'))).toBe(VERSION);
    expect(fs.readdirSync(lib).sort()).toEqual(['0.0.9', VERSION, 'current', 'installed'].sort());
    expect(execLog().slice(3)).toEqual(['systemctl daemon-reload', 'systemctl enable podvisor.service', 'systemctl restart podvisor.service']);
  });

  test('uninstall: the service stopped and disabled, the node as it was before', () => {
    run('uninstall');
    expect(execLog().slice(6)).toEqual(['systemctl disable --now podvisor.service', 'systemctl daemon-reload']);
    fs.rmSync(path.join(node, 'exec.log'));
    expect(tree(node)).toEqual(before);
    expect(run('uninstall')).toMatch(/not installed under \/usr\/local: nothing to do/);
  });
});

// deploy/daemonset.yaml, deploy/uninstall.yaml and deploy/csi/node.yaml's plugin, as they are,
// run by a podvisor daemon as kubelet would ask it to (CRI calls made from the pod template):
// the image pulled from the local registry, host network and PID, so the host-pod backend runs
// them. What a test must change: the hostPath volumes name scratch directories instead of the
// node's / and kubelet's dirs, and HOST_EXEC enters the node's namespaces with the image's
// nsenter (through this test's process, not PID 1) but runs a recorder there, not systemctl.
// A recorded `systemctl restart podvisor.service` is played as systemd would: SIGTERM to the
// daemon, then a new one.
describe('the manifests run as host pods by a podvisor daemon, the image pulled from the registry', () => {
  let d: TestDaemon;
  let scratch: string;
  let node: string;
  let before: string[];
  let image: string;
  const manifest = (file: string, kind = 'DaemonSet') => (yaml.loadAll(fs.readFileSync(path.join(CHECKOUT, 'deploy', file), 'utf8')) as any[]).find((o) => o?.kind === kind);
  const propagation: Record<string, string> = { None: 'PROPAGATION_PRIVATE', HostToContainer: 'PROPAGATION_HOST_TO_CONTAINER', Bidirectional: 'PROPAGATION_BIDIRECTIONAL' };

  /**
   * RunPodSandbox, CreateContainer and StartContainer for container `name` of a pod template,
   * as kubelet makes them: host namespaces, privileged, env (fieldRef spec.nodeName resolved),
   * $(VAR) in command and args, hostPath volume mounts (each host path mapped through `paths`).
   */
  async function runTemplate(podName: string, template: any, name: string, paths: Record<string, string>, env: Record<string, string> = {}): Promise<{ pod: string; id: string; cfg: any }> {
    const spec = template.spec;
    const c = spec.containers.find((x: any) => x.name === name);
    expect(c.image).toBe(`podvisor/podvisor:${VERSION}`); // pointed at the registry, as the README says
    const ns = { network: spec.hostNetwork ? 'NODE' : 'POD', pid: spec.hostPID ? 'NODE' : 'CONTAINER', ipc: spec.hostIPC ? 'NODE' : 'POD' };
    const privileged = !!c.securityContext?.privileged;
    const cfg = podConfig(podName, path.join(d.logs, `${podName}-${++pods}`));
    fs.mkdirSync(cfg.log_directory); // kubelet makes the pod's log directory
    cfg.labels = { ...cfg.labels, ...template.metadata.labels };
    cfg.linux.security_context = { namespace_options: ns, privileged };
    const vars: Record<string, string> = {};
    for (const e of c.env ?? []) {
      if (e.valueFrom) expect(e.valueFrom.fieldRef.fieldPath).toBe('spec.nodeName');
      vars[e.name] = e.valueFrom ? 'node-a' : e.value;
    }
    Object.assign(vars, env);
    const expand = (a: string) => a.replace(/\$\(([A-Z_]+)\)/g, (_, v) => vars[v] ?? `$(${v})`);
    const mounts = (c.volumeMounts ?? []).map((m: any) => {
      const host = spec.volumes.find((v: any) => v.name === m.name).hostPath.path;
      expect(paths[host]).toBeDefined();
      return { container_path: m.mountPath, host_path: paths[host], readonly: !!m.readOnly, propagation: propagation[m.mountPropagation ?? 'None'] };
    });
    const { pod_sandbox_id: pod } = await d.runtime('RunPodSandbox', { config: cfg, runtime_handler: '' });
    const { container_id: id } = await d.runtime('CreateContainer', {
      pod_sandbox_id: pod, sandbox_config: cfg,
      config: {
        metadata: { name, attempt: 0 }, image: { image }, log_path: `${name}.log`,
        command: (c.command ?? []).map(expand), args: (c.args ?? []).map(expand),
        envs: Object.entries(vars).map(([key, value]) => ({ key, value: Buffer.from(value) })), mounts, // KeyValue.value: bytes
        labels: { 'io.kubernetes.container.name': name },
        linux: { security_context: { privileged, namespace_options: ns, ...(c.securityContext?.runAsUser !== undefined ? { run_as_user: { value: c.securityContext.runAsUser } } : {}) } },
      },
    });
    await d.runtime('StartContainer', { container_id: id });
    const st = await d.runtime('PodSandboxStatus', { pod_sandbox_id: pod, verbose: true });
    expect(JSON.parse(st.info.info)).toMatchObject({ backend: 'host' });
    return { pod, id, cfg };
  }

  const logOf = (cfg: any, name: string) => {
    const f = path.join(cfg.log_directory, `${name}.log`);
    return fs.existsSync(f) ? readCriLog(fs.readFileSync(f)) : '';
  };
  async function until<T>(what: string, fn: () => T | undefined | false | Promise<T | undefined | false>, ms = 60_000): Promise<T> {
    const deadline = Date.now() + ms;
    for (;;) {
      const v = await fn();
      if (v) return v;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  const waitLog = (cfg: any, name: string, re: RegExp) => until(`${name}'s log to match ${re}: ${JSON.stringify(logOf(cfg, name))}`, () => re.test(logOf(cfg, name)) && logOf(cfg, name));
  const status = async (id: string) => (await d.runtime('ContainerStatus', { container_id: id, verbose: true }));
  const pidOf = async (id: string): Promise<number> => JSON.parse((await status(id)).info.info).pid;
  async function removePod(pod: string): Promise<void> {
    await d.runtime('StopPodSandbox', { pod_sandbox_id: pod });
    await d.runtime('RemovePodSandbox', { pod_sandbox_id: pod });
  }
  /** systemctl as the installer ran it on the node: each line "<args> mnt:<ns> pid:<ns>" as seen there */
  const execLog = () => (fs.existsSync(path.join(node, 'exec.log')) ? fs.readFileSync(path.join(node, 'exec.log'), 'utf8').trim().split('\n') : []);
  const hostNs = () => `mnt:${fs.readlinkSync('/proc/self/ns/mnt')} pid:${fs.readlinkSync('/proc/self/ns/pid')}`;
  const installer = () => manifest('daemonset.yaml').spec.template;
  const nodePaths = () => ({ '/': node });
  // the manifest's nsenter, aimed at this test's process: PID 1 of this test machine is a
  // sandbox's init whose namespaces not even root may open, and this process is in the node's
  const hostExec = () => ({ HOST_EXEC: `nsenter -t ${process.pid} -m -u -i -n -p -- /bin/sh ${node}/record` });
  /** The restart systemd makes of podvisor.service: SIGTERM (KillMode=process), then a new process. */
  async function systemdRestart(): Promise<void> {
    const old = d.pid;
    await d.stopProcess();
    await d.launch();
    expect(d.pid).not.toBe(old);
  }

  let install: { pod: string; id: string; cfg: any };
  let pods = 0;

  beforeAll(async () => {
    const registry = await pushed();
    image = `${registry.host}/podvisor/podvisor:${VERSION}`;
    scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-image-pods-'));
    node = path.join(scratch, 'node');
    for (const dir of ['usr/local/bin', 'etc/podvisor']) fs.mkdirSync(path.join(node, dir), { recursive: true });
    fs.writeFileSync(path.join(node, 'usr/local/bin/other-tool'), 'x');
    fs.writeFileSync(path.join(node, 'etc/podvisor/config.toml'), 'version = 1\n# the operator\'s\n');
    // runs in the node's namespaces (nsenter -t 1): says where it ran
    fs.writeFileSync(path.join(node, 'record'), `echo "$* mnt:$(readlink /proc/self/ns/mnt) pid:$(readlink /proc/self/ns/pid)" >> ${node}/exec.log\n`);
    before = tree(node);
    d = await TestDaemon.start({ templates: false, registries: { [registry.host]: `http://${registry.host}` } });
    await d.image('PullImage', { image: { image } }, 600_000);
  }, 900_000);

  afterAll(async () => {
    await d?.destroy();
    if (scratch) fs.rmSync(scratch, { recursive: true, force: true });
  });

  test('the installer DaemonSet\'s pod installs the release on the node, restarts podvisor in the node\'s namespaces, and keeps running across that restart', async () => {
    install = await runTemplate('podvisor-install', installer(), 'install', nodePaths(), hostExec());
    await waitLog(install.cfg, 'install', /installed and \(re\)started\n/);
    const lib = path.join(node, 'usr/local/lib/podvisor');
    expect(fs.readlinkSync(path.join(lib, 'current'))).toBe(VERSION);
    expect(fs.existsSync(path.join(lib, VERSION, 'node'))).toBe(true);
    expect(fs.readFileSync(path.join(node, 'usr/local/lib/systemd/system/podvisor.service'), 'utf8')).toMatch(/^Type=notify$/m);
    expect(fs.readFileSync(path.join(node, 'etc/podvisor/config.toml'), 'utf8')).toContain('the operator\'s');
    // systemctl ran in the node's own mount and PID namespaces, not the pod's
    expect(execLog()).toEqual(['daemon-reload', 'enable podvisor.service', 'restart podvisor.service'].map((a) => `systemctl ${a} ${hostNs()}`));
    const pid = await pidOf(install.id);
    await systemdRestart();
    expect((await status(install.id)).status.state).toBe('CONTAINER_RUNNING');
    expect(await pidOf(install.id)).toBe(pid);
    expect(fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')).toContain('/installer/node-install.sh');
    const r = await d.runtime('ExecSync', { container_id: install.id, cmd: ['cat', `/host/usr/local/lib/podvisor/current/release.json`], timeout: 30 });
    expect(JSON.parse(Buffer.from(r.stdout).toString())).toMatchObject({ version: VERSION });
  });

  test('the same version again (a new pod of the DaemonSet): nothing installed, nothing restarted', async () => {
    await removePod(install.pod);
    install = await runTemplate('podvisor-install', installer(), 'install', nodePaths(), hostExec());
    await waitLog(install.cfg, 'install', /is already installed: the service is left as it is\n/);
    expect(execLog()).toHaveLength(3);
  });

  let csi: { pod: string; id: string; cfg: any };
  let csiDirs: Record<string, string>;
  const csiClient = (svc: string) => {
    const raw = new (loadCsi() as any)[svc](`unix://${csiDirs['/var/lib/kubelet/plugins/csi.podvisor.dev']}/csi.sock`, grpc.credentials.createInsecure());
    const call = (m: string, req: object): Promise<any> => new Promise((resolve, reject) => raw[m](req, { deadline: Date.now() + 30_000 }, (err: Error | null, res: any) => (err ? reject(err) : resolve(res))));
    return { call, close: () => raw.close() };
  };

  test('the CSI node plugin (deploy/csi/node.yaml) runs from the image as a host pod: serves CSI on kubelet\'s plugin dir, writes descriptors sealed with the daemon\'s key', async () => {
    csiDirs = {
      '/var/lib/kubelet/plugins/csi.podvisor.dev': path.join(scratch, 'plugins', 'csi.podvisor.dev'),
      '/var/lib/kubelet/pods': path.join(scratch, 'kubelet-pods'),
      '/var/lib/podvisor/storage': path.join(d.root, 'storage'), // the daemon's own: its seal key
    };
    for (const dir of Object.values(csiDirs)) fs.mkdirSync(dir, { recursive: true }); // DirectoryOrCreate / kubelet's
    csi = await runTemplate('podvisor-csi-node', manifest('csi/node.yaml').spec.template, 'plugin', csiDirs);
    await until('the plugin socket', () => fs.existsSync(path.join(csiDirs['/var/lib/kubelet/plugins/csi.podvisor.dev'], 'csi.sock')));
    const id = csiClient('Identity');
    const nodeSvc = csiClient('Node');
    try {
      expect(await id.call('Probe', {})).toEqual({ ready: { value: true } });
      expect(await id.call('GetPluginInfo', {})).toMatchObject({ name: DRIVER_NAME, vendor_version: VERSION });
      expect(await nodeSvc.call('NodeGetInfo', {})).toMatchObject({ node_id: 'node-a' }); // $(NODE_NAME)
      // kubelet's target path, as the plugin sees it through its hostPath mount
      const target = '/var/lib/kubelet/pods/uid-1/volumes/kubernetes.io~csi/pv-nfs/mount';
      await nodeSvc.call('NodePublishVolume', {
        volume_id: 'nfs-1', target_path: target, readonly: false,
        volume_capability: { mount: { fs_type: '', mount_flags: [] }, access_mode: { mode: 'MULTI_NODE_MULTI_WRITER' } },
        volume_context: { kind: 'nfs', server: '10.1.2.3', share: '/exports/a', version: '4.1' },
      });
      const onHost = path.join(csiDirs['/var/lib/kubelet/pods'], 'uid-1/volumes/kubernetes.io~csi/pv-nfs/mount');
      expect(JSON.parse(fs.readFileSync(path.join(onHost, DESCRIPTOR_FILE), 'utf8'))).toMatchObject({ kind: 'nfs', nfs: { server: '10.1.2.3', export: '/exports/a' } });
      // sealed with the daemon's key for the directory kubelet named (the daemon reads it there)
      const desc = (await readDescriptor(onHost))!;
      const key = await loadSealKey(path.join(d.root, 'storage', 'volume-seal.key'), false);
      expect(JSON.parse(fs.readFileSync(path.join(onHost, DESCRIPTOR_FILE), 'utf8')).seal).toBe(sealDescriptor(desc, target, key));
      await nodeSvc.call('NodeUnpublishVolume', { volume_id: 'nfs-1', target_path: target });
      expect(fs.existsSync(onHost)).toBe(false);
    } finally {
      id.close();
      nodeSvc.close();
    }
  });

  test('an upgrade through the installer keeps the running pods: the CSI plugin and the installer go on in the same processes across the restart', async () => {
    const lib = path.join(node, 'usr/local/lib/podvisor');
    fs.renameSync(path.join(lib, VERSION), path.join(lib, '0.0.9'));
    fs.rmSync(path.join(lib, 'current'));
    fs.symlinkSync('0.0.9', path.join(lib, 'current'));
    const csiPid = await pidOf(csi.id);
    await removePod(install.pod); // the rollout of a new image: the old pod goes, a new one comes
    install = await runTemplate('podvisor-install', installer(), 'install', nodePaths(), hostExec());
    await waitLog(install.cfg, 'install', /\(re\)started \(was 0\.0\.9\)\n/);
    expect(fs.readlinkSync(path.join(lib, 'current'))).toBe(VERSION);
    expect(fs.readdirSync(lib).sort()).toEqual(['0.0.9', VERSION, 'current', 'installed'].sort());
    expect(execLog().slice(3)).toEqual(['daemon-reload', 'enable podvisor.service', 'restart podvisor.service'].map((a) => `systemctl ${a} ${hostNs()}`));
    const installPid = await pidOf(install.id);
    await systemdRestart();
    for (const [c, pid] of [[csi.id, csiPid], [install.id, installPid]] as const) {
      expect((await status(c)).status.state).toBe('CONTAINER_RUNNING');
      expect(await pidOf(c)).toBe(pid);
    }
    const id = csiClient('Identity');
    try {
      expect(await id.call('Probe', {})).toEqual({ ready: { value: true } });
    } finally {
      id.close();
    }
    await removePod(csi.pod);
  });

  test('the cleanup DaemonSet (deploy/uninstall.yaml) as a host pod: podvisor disabled in the node\'s namespaces, the node as it was before', async () => {
    await removePod(install.pod); // README: delete podvisor-install first
    const un = await runTemplate('podvisor-uninstall', manifest('uninstall.yaml').spec.template, 'uninstall', nodePaths(), hostExec());
    await until('the uninstall to finish', () => execLog().length === 8);
    expect(execLog().slice(6)).toEqual(['disable --now podvisor.service', 'daemon-reload'].map((a) => `systemctl ${a} ${hostNs()}`));
    expect((await status(un.id)).status.state).toBe('CONTAINER_RUNNING'); // --stay
    await removePod(un.pod);
    fs.rmSync(path.join(node, 'exec.log'));
    expect(tree(node)).toEqual(before);
    // nothing of the host pods left behind: no shim, no mount under the daemon's state
    expect(fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4]).filter((m) => m?.startsWith(d.state + '/') && m !== path.join(d.state, 'host'))).toEqual([]);
  });
});

// The CSI controller (deploy/csi/controller.yaml) from the image: librados and librbd, which it
// loads at run time, are in the image; it creates and deletes an RBD image on a real Ceph.
(cephAvailable() ? describe : describe.skip)('the CSI controller from the image (chroot) on a real Ceph', () => {
  let ceph: CephCluster;
  let proc: ChildProcess | undefined;
  beforeAll(async () => {
    ceph = await startCeph();
  }, 120_000);
  afterAll(async () => {
    if (proc && proc.exitCode === null) {
      const gone = new Promise((r) => proc!.once('exit', r));
      proc.kill('SIGTERM');
      await gone;
    }
    await ceph?.stop();
  });

  test('CreateVolume makes the RBD image, DeleteVolume removes it', async () => {
    const ctl = (yaml.loadAll(fs.readFileSync(path.join(CHECKOUT, 'deploy', 'csi', 'controller.yaml'), 'utf8')) as any[]).find((o) => o?.kind === 'Deployment');
    const c = ctl.spec.template.spec.containers.find((x: any) => x.image === `podvisor/podvisor:${VERSION}`);
    expect(c.args).toEqual(['csi', '--mode=controller', '--endpoint=unix:///csi/csi.sock']);
    fs.mkdirSync(path.join(rootfs, 'csi'), { recursive: true });
    // the image's entrypoint with the manifest's args
    proc = spawn(CHROOT, [rootfs, `/release/podvisor-${VERSION}/bin/podvisor`, ...c.args], { env: { PATH: '/bin' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    proc.stdout!.on('data', (b) => (out += b));
    proc.stderr!.on('data', (b) => (out += b));
    const sock = path.join(rootfs, 'csi', 'csi.sock');
    const deadline = Date.now() + 60_000;
    while (!fs.existsSync(sock)) {
      if (proc.exitCode !== null || Date.now() > deadline) throw new Error(`the controller did not listen: ${out}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    const raw = new (loadCsi() as any).Controller(`unix://${sock}`, grpc.credentials.createInsecure());
    const call = (m: string, req: object): Promise<any> => new Promise((resolve, reject) => raw[m](req, { deadline: Date.now() + 60_000 }, (err: Error | null, res: any) => (err ? reject(err) : resolve(res))));
    try {
      const secrets = { userID: ceph.user, userKey: ceph.userKey };
      const res = await call('CreateVolume', {
        name: 'pvc-from-image', capacity_range: { required_bytes: String(8 << 20) },
        volume_capabilities: [{ mount: { fs_type: 'ext4' }, access_mode: { mode: 'SINGLE_NODE_WRITER' } }],
        parameters: { pool: ceph.pool, monitors: ceph.monitor }, secrets,
      });
      expect(res.volume).toMatchObject({ volume_id: `rbd:${ceph.pool}//pvc-from-image`, capacity_bytes: String(8 << 20) });
      expect(await ceph.rbd(['ls', ceph.pool])).toContain('pvc-from-image');
      await call('DeleteVolume', { volume_id: res.volume.volume_id, secrets: { ...secrets, monitors: ceph.monitor } });
      expect(await ceph.rbd(['ls', ceph.pool])).not.toContain('pvc-from-image');
    } finally {
      raw.close();
    }
  });
});
