// podvisor's OCI image as an operator makes and ships it: scripts/release.sh, then
// scripts/image.js (what `make image` runs) writes an OCI layout; it is checked blob by blob
// (digests, sizes, diff ids, media types, entrypoint, labels), pushed with skopeo to a local
// registry and read back from there; its root file system, unpacked, runs the release's CLI
// with nothing from the host (chroot), and its node installer (deploy/daemonset.yaml's
// command) installs the release into a node root, restarts the service only when the version
// changed, and uninstalls exactly what it put there. The node's systemctl is the one stand-in:
// HOST_EXEC records the commands instead of reaching the test machine's init. The DaemonSet
// itself running as a host pod comes with the host-pod backend.
import { execFileSync, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import yaml from 'js-yaml';
import { Registry, startRegistry } from '../test/support/registry';

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

test('pushed to a local registry with skopeo, the registry serves the same manifest', async () => {
  registry = await startRegistry();
  const ref = `docker://${registry.host}/podvisor/podvisor:${VERSION}`;
  execFileSync('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', `oci:${layout}:${VERSION}`, ref], { env: { ...process.env, HOME: work }, timeout: 300_000 });
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
