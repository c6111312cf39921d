// A throw-away single-node Ceph cluster for tests: one mon (msgr v1 only, on 127.0.0.1 and a
// free port) and one OSD on memstore, cephx on, pool size 1, everything under a temp dir. The
// daemons run in the foreground as our children (never daemonised), so stop() always finds
// them. Writable ~9 s after start on these machines (machine-facts.md).
import { ChildProcess, execFile, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export interface CephCluster {
  dir: string;
  /** "127.0.0.1:<port>" (msgr v1) */
  monitor: string;
  monHost: string;
  monPort: number;
  pool: string;
  conf: string;
  adminKey: string;
  /** a restricted client (`profile rbd` on the pool), as a CSI driver would use */
  user: string;
  userKey: string;
  /** root-only key files (mode 0600) holding the bare base64 key */
  adminKeyFile: string;
  userKeyFile: string;
  /** runs the `ceph` / `rbd` CLIs against this cluster as client.admin */
  ceph(args: string[], timeoutMs?: number): Promise<string>;
  rbd(args: string[], timeoutMs?: number): Promise<string>;
  stop(): Promise<void>;
}

export function cephAvailable(): boolean {
  return ['ceph-mon', 'ceph-osd', 'ceph', 'rbd', 'monmaptool', 'ceph-authtool'].every((b) =>
    ['/usr/bin', '/usr/sbin', '/bin'].some((d) => fs.existsSync(path.join(d, b))));
}

export async function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, host, () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

function run(cmd: string, args: string[], timeoutMs = 60_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')}: ${err.message} ${String(stderr).slice(-800)}`));
      else resolve(String(stdout));
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * `host`: the local IPv4 address the mon and the OSD bind to (default 127.0.0.1). QEMU's librbd
 * runs in the host netns (podvisor-launch), so 127.0.0.1 serves pods on a CNI network too; the
 * gateway address of a pod bridge also makes the cluster reachable from inside pod guests.
 */
export async function startCeph(opts: { pool?: string; host?: string } = {}): Promise<CephCluster> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-ceph-'));
  const pool = opts.pool ?? 'rbd';
  const host = opts.host ?? '127.0.0.1';
  const port = await freePort(host);
  const fsid = crypto.randomUUID();
  const conf = path.join(dir, 'ceph.conf');
  for (const d of ['mon', 'osd', 'run', 'log']) fs.mkdirSync(path.join(dir, d));
  fs.writeFileSync(conf, [
    '[global]',
    `fsid = ${fsid}`,
    `mon host = v1:${host}:${port}`,
    'mon initial members = a',
    'auth cluster required = cephx',
    'auth service required = cephx',
    'auth client required = cephx',
    'ms bind msgr2 = false',
    'ms bind ipv6 = false',
    `public addr = ${host}`,
    'osd pool default size = 1',
    'osd pool default min size = 1',
    'mon allow pool size one = true',
    'mon allow pool delete = true',
    'mon warn on pool no redundancy = false',
    'osd crush chooseleaf type = 0',
    'osd objectstore = memstore',
    'memstore device bytes = 1073741824',
    `run dir = ${dir}/run`,
    `log file = ${dir}/log/$name.log`,
    `admin socket = ${dir}/run/$name.asok`,
    `keyring = ${dir}/admin.keyring`,
    'client mount timeout = 15',
    'rados mon op timeout = 15',
    '[mon]',
    `mon data = ${dir}/mon`,
    `keyring = ${dir}/mon/keyring`,
    '[osd]',
    `osd data = ${dir}/osd`,
    `keyring = ${dir}/osd/keyring`,
    '',
  ].join('\n'));
  const procs: ChildProcess[] = [];
  const cluster: CephCluster = {
    dir, monitor: `${host}:${port}`, monHost: host, monPort: port, pool, conf,
    adminKey: '', user: 'pvtest', userKey: '', adminKeyFile: path.join(dir, 'admin.key'), userKeyFile: path.join(dir, 'pvtest.key'),
    ceph: (args, t) => run('ceph', ['-c', conf, ...args], t),
    rbd: (args, t) => run('rbd', ['-c', conf, ...args], t),
    async stop() {
      for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGTERM');
      const deadline = Date.now() + 5000;
      while (procs.some((p) => p.exitCode === null && p.signalCode === null) && Date.now() < deadline) await sleep(50);
      for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
      while (procs.some((p) => p.exitCode === null && p.signalCode === null)) await sleep(20);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  const daemon = (cmd: string, args: string[]) => {
    const log = fs.openSync(path.join(dir, 'log', `${cmd}.out`), 'a');
    const p = spawn(cmd, ['-f', '-c', conf, ...args], { stdio: ['ignore', log, log] });
    fs.closeSync(log);
    procs.push(p);
    return p;
  };
  try {
    const monKeyring = path.join(dir, 'mon.seed.keyring');
    await run('ceph-authtool', ['--create-keyring', monKeyring, '--gen-key', '-n', 'mon.', '--cap', 'mon', 'allow *']);
    await run('ceph-authtool', ['--create-keyring', cluster.adminKeyFile + 'ring', '--gen-key', '-n', 'client.admin',
      '--cap', 'mon', 'allow *', '--cap', 'osd', 'allow *', '--cap', 'mgr', 'allow *']);
    fs.renameSync(cluster.adminKeyFile + 'ring', path.join(dir, 'admin.keyring'));
    await run('ceph-authtool', [monKeyring, '--import-keyring', path.join(dir, 'admin.keyring')]);
    await run('monmaptool', ['--create', '--addv', 'a', `[v1:${host}:${port}]`, '--fsid', fsid, path.join(dir, 'monmap')]);
    await run('ceph-mon', ['-c', conf, '--mkfs', '-i', 'a', '--monmap', path.join(dir, 'monmap'), '--keyring', monKeyring]);
    daemon('ceph-mon', ['-i', 'a']);
    const osdId = (await cluster.ceph(['osd', 'create'], 30_000)).trim();
    await run('ceph-osd', ['-c', conf, '-i', osdId, '--mkfs', '--mkkey', '--no-mon-config', '--osd-uuid', crypto.randomUUID()]);
    await cluster.ceph(['auth', 'add', `osd.${osdId}`, 'osd', 'allow *', 'mon', 'allow profile osd', '-i', path.join(dir, 'osd', 'keyring')]);
    daemon('ceph-osd', ['-i', osdId]);
    await cluster.ceph(['osd', 'pool', 'create', pool, '8']);
    await cluster.rbd(['pool', 'init', pool]);
    cluster.adminKey = (await cluster.ceph(['auth', 'print-key', 'client.admin'])).trim();
    cluster.userKey = (await cluster.ceph(['auth', 'get-or-create-key', `client.${cluster.user}`, 'mon', 'profile rbd', 'osd', `profile rbd pool=${pool}`])).trim();
    fs.writeFileSync(cluster.adminKeyFile, cluster.adminKey + '\n', { mode: 0o600 });
    fs.writeFileSync(cluster.userKeyFile, cluster.userKey + '\n', { mode: 0o600 });
    // writable once a probe object goes in (PGs peer a few seconds after the OSD boots)
    const probe = path.join(dir, 'probe');
    fs.writeFileSync(probe, 'x');
    const deadline = Date.now() + 60_000;
    for (;;) {
      try {
        await run('rados', ['-c', conf, '-p', pool, 'put', 'probe', probe, '--rados-osd-op-timeout', '3'], 10_000);
        await run('rados', ['-c', conf, '-p', pool, 'rm', 'probe'], 10_000);
        break;
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`ceph never became writable: ${(err as Error).message}`);
        if (procs.some((p) => p.exitCode !== null || p.signalCode !== null)) throw new Error(`a ceph daemon exited: ${tailLogs(dir)}`);
        await sleep(500);
      }
    }
    return cluster;
  } catch (err) {
    await cluster.stop().catch(() => undefined);
    throw err;
  }
}

function tailLogs(dir: string): string {
  try {
    return fs.readdirSync(path.join(dir, 'log')).map((f) => `${f}: ${fs.readFileSync(path.join(dir, 'log', f), 'utf8').slice(-600)}`).join('\n');
  } catch {
    return '';
  }
}
