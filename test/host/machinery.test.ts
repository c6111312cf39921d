// The host backend's machinery, below the daemon, on this host for real: pinned namespaces
// (podvisor-launch pinns), erofs + overlay root file systems, the OCI spec's host target, and the
// container shim (libcontainer in process): logs, exec, attach, exit codes, OOM kills, a
// re-connecting daemon, removal without leftovers. Needs root; run under /tmp/pv-e2e.lock.
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { silentLogger } from '../../src/util/log';
import { ensureSharedDir } from '../../src/runtime/backends/host/mount';
import { checkSysctls, initAlive, pidNamespaceOf, pin, unpin } from '../../src/runtime/backends/host/pinned-ns';
import { HostRootfs } from '../../src/runtime/backends/host/rootfs';
import { ShimConnection, ShimExit, spawnShim } from '../../src/runtime/backends/host/shim-client';
import { resolveUser } from '../../src/runtime/backends/host/users';
import { buildSpec, HostTarget } from '../../src/runtime/oci-spec';
import { busyboxErofs, cgroupsNamed, launcherPath, liveProcesses, mountsUnder, removeDir } from './support';

jest.setTimeout(120_000);

let dir: string;
let state: string;
let root: string;
let launcher: string;
let image: { id: string; erofsPath: string };

beforeAll(async () => {
  launcher = launcherPath();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-host-'));
  state = path.join(dir, 'state', 'host');
  root = path.join(dir, 'root', 'host');
  await ensureSharedDir(state);
  image = busyboxErofs(dir);
});

afterAll(() => {
  removeDir(dir);
});

/** A container's root file system as a host pod makes it: the pod's image mount, an overlay on it. */
async function create(rootfs: HostRootfs, id: string, img: { id: string; erofsPath: string }): Promise<string> {
  return rootfs.createOverlay(id, await rootfs.mountImage(img));
}
async function remove(rootfs: HostRootfs, id: string, imageId: string): Promise<void> {
  await rootfs.removeOverlay(id);
  await rootfs.unmountImage(imageId);
}

const nsenter = (args: string[]) => execFileSync('nsenter', args, { encoding: 'utf8' }).trim();

describe('pinned pod namespaces', () => {
  it('pins network, IPC and UTS with hostname, sysctls, loopback, shm and a PID namespace init; unpin leaves nothing', async () => {
    const podDir = path.join(state, 'pods', 'p1');
    const ns = await pin(launcher, {
      dir: podDir, net: true, ipc: true, hostname: 'web-1',
      sysctls: { 'net.ipv4.ip_unprivileged_port_start': '81', 'kernel.shmmni': '1234' }, shmBytes: 64 << 20, pid: true,
    });
    try {
      expect(nsenter([`--uts=${ns.uts}`, 'hostname'])).toBe('web-1');
      expect(nsenter([`--net=${ns.net}`, 'cat', '/proc/sys/net/ipv4/ip_unprivileged_port_start'])).toBe('81');
      expect(nsenter([`--ipc=${ns.ipc}`, 'cat', '/proc/sys/kernel/shmmni'])).toBe('1234');
      expect(nsenter([`--net=${ns.net}`, 'ip', '-o', 'link', 'show', 'lo'])).toMatch(/UP/);
      // the host's own settings are untouched
      expect(fs.readFileSync('/proc/sys/kernel/shmmni', 'utf8').trim()).not.toBe('1234');
      expect(mountsUnder(podDir).sort()).toEqual(['ipc', 'net', 'shm', 'uts'].map((n) => path.join(podDir, n)));
      expect(ns.init && initAlive(ns.init)).toBe(true);
      // the init is PID 1 of its namespace and shares the pinned ones
      expect(fs.readFileSync(`/proc/${ns.init!.pid}/status`, 'utf8')).toMatch(/^NSpid:\s+\d+\s+1$/m);
      expect(fs.statSync(`/proc/${ns.init!.pid}/ns/net`).ino).toBe(fs.statSync(ns.net!).ino);
      expect(pidNamespaceOf(ns)).toBe(`/proc/${ns.init!.pid}/ns/pid`);
    } finally {
      await unpin(podDir, ns);
    }
    expect(mountsUnder(podDir)).toEqual([]);
    expect(fs.existsSync(podDir)).toBe(false);
    expect(initAlive(ns.init!)).toBe(false);
  });

  it('refuses sysctls that would change the host', () => {
    expect(() => checkSysctls({ 'net.core.somaxconn': '1' }, { net: false, ipc: true, uts: true })).toThrow(/host's net namespace/);
    expect(() => checkSysctls({ 'kernel.shmmax': '1' }, { net: true, ipc: false, uts: true })).toThrow(/host's ipc namespace/);
    expect(() => checkSysctls({ 'vm.swappiness': '1' }, { net: true, ipc: true, uts: true })).toThrow(/not namespaced/);
    expect(() => checkSysctls({ 'net.core.somaxconn': '1', 'fs.mqueue.msg_max': '20' }, { net: true, ipc: true, uts: false })).not.toThrow();
  });
});

describe('host root file systems', () => {
  it('mounts an image once for all its containers, an overlay each; removal and a crashed run leave nothing', async () => {
    const rootfs = new HostRootfs(state, root, silentLogger);
    const a = crypto.randomBytes(32).toString('hex');
    const b = crypto.randomBytes(32).toString('hex');
    const ra = await create(rootfs, a, image);
    const rb = await create(rootfs, b, image);
    const imageMount = path.join(state, 'images', image.id.slice(7));
    expect(mountsUnder(path.join(state, 'images'))).toEqual([imageMount]);
    fs.writeFileSync(path.join(ra, 'tmp', 'only-a'), 'x');
    expect(fs.existsSync(path.join(rb, 'tmp', 'only-a'))).toBe(false);
    expect(fs.existsSync(path.join(root, 'containers', a, 'upper', 'tmp', 'only-a'))).toBe(true);
    expect(fs.readFileSync(path.join(ra, 'etc', 'passwd'), 'utf8')).toMatch(/^app:x:1000/m);
    await remove(rootfs, a, image.id);
    expect(mountsUnder(path.join(state, 'images'))).toEqual([imageMount]);
    expect(fs.existsSync(path.join(root, 'containers', a))).toBe(false);
    // a daemon that crashed with b still there: a new instance that knows no container cleans up
    await new HostRootfs(state, root, silentLogger).sweep(new Set());
    expect(mountsUnder(path.join(state, 'images'))).toEqual([]);
    expect(mountsUnder(path.join(state, 'containers'))).toEqual([]);
    expect(fs.readdirSync(path.join(root, 'containers'))).toEqual([]);
  });

  it('resolves users and groups inside the image, never through a symlink out of it', async () => {
    const rootfs = new HostRootfs(state, root, silentLogger);
    const id = crypto.randomBytes(32).toString('hex');
    const r = await create(rootfs, id, image);
    try {
      const named = { process: { user: { uid: 0, gid: 0 } } };
      await resolveUser(named, 'app', false, r);
      expect(named.process.user).toEqual({ uid: 1000, gid: 1000, additionalGids: [50000] });
      const byUid = { process: { user: { uid: 1000, gid: 7 } } };
      await resolveUser(byUid, null, true, r);
      expect(byUid.process.user).toEqual({ uid: 1000, gid: 7, additionalGids: [50000] });
      await expect(resolveUser({ process: {} }, 'nobody', false, r)).rejects.toThrow(/not found/);
      fs.rmSync(path.join(r, 'etc', 'passwd'));
      fs.symlinkSync('/etc/passwd', path.join(r, 'etc', 'passwd')); // inside the image: its own /etc/passwd, which is gone
      await expect(resolveUser({ process: {} }, 'root', false, r)).rejects.toThrow(/not found/);
    } finally {
      await remove(rootfs, id, image.id);
    }
  });
});

describe('host container shim', () => {
  let rootfs: HostRootfs;
  let podDir: string;
  let ns: Awaited<ReturnType<typeof pin>>;
  const ociRoot = () => path.join(state, 'oci');

  beforeAll(async () => {
    rootfs = new HostRootfs(state, root, silentLogger);
    podDir = path.join(state, 'pods', 'p2');
    ns = await pin(launcher, { dir: podDir, net: true, ipc: true, hostname: 'pod-two', sysctls: {}, shmBytes: 64 << 20, pid: false });
  });

  afterAll(async () => {
    await unpin(podDir, ns);
  });

  /** A container of the pinned pod, created by a shim; returns what the test needs. */
  async function container(config: any, opts: { tty?: boolean; stdin?: boolean; hostPath?: string } = {}) {
    const id = crypto.randomBytes(32).toString('hex');
    const r = await create(rootfs, id, image);
    const cdir = rootfs.containerDir(id);
    const target: HostTarget = {
      kind: 'host', netns: ns.net, ipcns: ns.ipc, utsns: ns.uts, shm: ns.shm!, etc: {},
      cgroupsPath: `/podvisor-test/podvisor-${id}`, rootfs: r, cgroupV2: false, nofile: 1024,
    };
    const mounts = opts.hostPath ? [{ destination: '/data', source: opts.hostPath, readonly: false }] : [];
    const { spec, username } = buildSpec({ target, config: { metadata: { name: 'c' }, image: { image: 'busybox' }, ...config }, sandboxConfig: { hostname: 'pod-two' }, imageConfig: { config: { Env: ['PATH=/bin'] } }, mounts });
    await resolveUser(spec, username, false, r);
    fs.writeFileSync(path.join(cdir, 'config.json'), JSON.stringify(spec));
    const log = path.join(dir, 'logs', `${id}.log`);
    const paths = { launcher, id: id.slice(0, 16), bundle: cdir, ociRoot: ociRoot(), socket: path.join(cdir, 'shim.sock'), exitFile: path.join(cdir, 'exit.json'), log, tty: !!opts.tty, stdin: !!opts.stdin, stdinOnce: false };
    const started = await spawnShim(paths);
    const conn = await ShimConnection.connect(paths.socket);
    const exited = new Promise<ShimExit>((resolve) => conn.once('exit', resolve));
    return { id, conn, exited, log, paths, pid: started.pid, shimPid: started.shimPid, remove: async () => {
      await conn.request('delete').catch(() => undefined);
      conn.close();
      await remove(rootfs, id, image.id);
    } };
  }

  async function exec(socket: string, args: string[], opts: { tty?: boolean; stdin?: Buffer } = {}): Promise<{ code: number; out: string; err: string }> {
    const c = await ShimConnection.connect(socket);
    const exit = new Promise<any>((resolve) => c.once('exit', resolve));
    let out = '';
    let err = '';
    c.stdout.on('data', (d) => (out += d));
    c.stderr.on('data', (d) => (err += d));
    await c.request('exec', { args, tty: !!opts.tty, stdin: !!opts.stdin });
    if (opts.stdin) {
      await c.writeStdin(opts.stdin);
      c.endStdin();
    }
    const e = await exit;
    await c.closed;
    return { code: e.exit_code, out, err };
  }

  it('runs a container in the pod\'s namespaces, logs its output, execs into it, reports its exit', async () => {
    const hostDir = fs.mkdtempSync(path.join(dir, 'vol-'));
    fs.chmodSync(hostDir, 0o777); // the container runs as app (uid 1000)
    const c = await container({ command: ['sh', '-c', 'echo out-line; echo err-line >&2; printf partial; sleep 3600'], linux: { security_context: { run_as_username: 'app' } } }, { hostPath: hostDir });
    try {
      await c.conn.request('start');
      const deadline = Date.now() + 10_000;
      while (!(fs.existsSync(c.log) && fs.readFileSync(c.log, 'utf8').includes('err-line')) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      const lines = fs.readFileSync(c.log, 'utf8').trim().split('\n').map((l) => l.split(' '));
      expect(lines.map((l) => l.slice(1).join(' ')).sort()).toEqual(['stderr F err-line', 'stdout F out-line']);
      expect(lines[0][0]).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$/);

      expect(await exec(c.paths.socket, ['id', '-G'])).toEqual({ code: 0, out: '1000 50000\n', err: '' });
      expect((await exec(c.paths.socket, ['id', '-un'])).out).toBe('app\n');
      expect((await exec(c.paths.socket, ['hostname'])).out).toBe('pod-two\n');
      const r = await exec(c.paths.socket, ['sh', '-c', 'cat; echo oops >&2; exit 3'], { stdin: Buffer.from('to stdin') });
      expect(r).toEqual({ code: 3, out: 'to stdin', err: 'oops\n' });
      // the pod's network namespace, not the host's
      expect(fs.readlinkSync(`/proc/${c.pid}/ns/net`)).not.toBe(fs.readlinkSync('/proc/self/ns/net'));
      expect((await exec(c.paths.socket, ['sh', '-c', 'ip -o link | wc -l'])).out.trim()).toBe('1');
      // a host path as a plain bind mount, writable both ways
      fs.writeFileSync(path.join(hostDir, 'from-host'), 'h');
      expect((await exec(c.paths.socket, ['sh', '-c', 'cat /data/from-host; echo c > /data/from-container'])).out).toBe('h');
      expect(fs.readFileSync(path.join(hostDir, 'from-container'), 'utf8')).toBe('c\n');
      // a tty exec with a terminal size
      const t = await exec(c.paths.socket, ['tty'], { tty: true });
      expect(t.out).toMatch(/^\/dev\/pts\/\d+\r\n$/);

      // a daemon that comes back: a new connection learns the state
      const again = await ShimConnection.connect(c.paths.socket);
      expect(await again.request('state')).toMatchObject({ pid: c.pid, running: true, exit: null });
      again.close();

      // kill -9 of the container's process: an exit event with 137, the exit file too
      process.kill(c.pid, 'SIGKILL');
      const e = await c.exited;
      expect(e).toMatchObject({ exit_code: 137, signal: 9, oom_killed: false });
      expect(JSON.parse(fs.readFileSync(c.paths.exitFile, 'utf8'))).toMatchObject({ exit_code: 137 });
      // the unterminated last output was logged when the output ended, as a partial record
      expect(fs.readFileSync(c.log, 'utf8')).toMatch(/ stdout P partial\n$/);
    } finally {
      await c.remove();
    }
    expect(cgroupsNamed(`podvisor-${c.id}`)).toEqual([]);
    expect(fs.existsSync(path.join(ociRoot(), c.paths.id))).toBe(false);
    expect(liveProcesses(c.paths.socket)).toEqual([]);
    expect(mountsUnder(rootfs.containerDir(c.id))).toEqual([]);
  });

  it('reports an OOM kill, attaches to stdin and stdout, reopens the log', async () => {
    const oom = await container({ command: ['sh', '-c', 'x=$(head -c 200000000 /dev/zero | tr "\\0" a)'], linux: { resources: { memory_limit_in_bytes: String(32 << 20), memory_swap_limit_in_bytes: String(32 << 20) } } });
    try {
      await oom.conn.request('start');
      expect(await oom.exited).toMatchObject({ exit_code: 137, oom_killed: true });
    } finally {
      await oom.remove();
    }

    const c = await container({ command: ['cat'], stdin: true }, { stdin: true });
    try {
      await c.conn.request('start');
      const a = await ShimConnection.connect(c.paths.socket);
      await a.request('attach', { stdin: true, stdout: true, stderr: true });
      const got = new Promise<string>((resolve) => {
        let s = '';
        a.stdout.on('data', (d) => {
          s += d;
          if (s.includes('\n')) resolve(s);
        });
      });
      await a.writeStdin(Buffer.from('echoed\n'));
      expect(await got).toBe('echoed\n');
      fs.renameSync(c.log, `${c.log}.1`);
      await c.conn.request('reopen');
      await a.writeStdin(Buffer.from('after rotation\n'));
      const deadline = Date.now() + 5000;
      while (!fs.existsSync(c.log) || !fs.readFileSync(c.log, 'utf8').includes('after rotation')) {
        if (Date.now() > deadline) throw new Error('nothing logged after reopen');
        await new Promise((r) => setTimeout(r, 50));
      }
      expect(fs.readFileSync(`${c.log}.1`, 'utf8')).toMatch(/ stdout F echoed\n$/);
      await c.conn.request('signal', { signal: 15, all: false }); // cat is PID 1: no handler, ignored
      await c.conn.request('signal', { signal: 9, all: true });
      expect((await c.exited).exit_code).toBe(137);
      await a.closed;
    } finally {
      await c.remove();
    }
    expect(cgroupsNamed('podvisor-test').flatMap((d) => fs.readdirSync(d).filter((n) => n.startsWith('podvisor-')))).toEqual([]);
  });

  afterAll(() => {
    for (const d of cgroupsNamed('podvisor-test')) fs.rmdirSync(d);
  });
});
