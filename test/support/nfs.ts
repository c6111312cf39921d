// A throw-away NFS server for tests: nfs-ganesha (VFS FSAL) + rpcbind in a private network
// namespace, joined by a veth pair to a second "client" namespace, exporting a temp dir. All NFS
// traffic stays between the two namespaces created here. The server runs in its own mount
// namespace with a private tmpfs on /run (rpcbind's socket), so nothing touches the host's /run
// or mount table. stop() kills the process group, deletes both namespaces and the temp dir.
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export interface NfsServer {
  dir: string;
  /** the exported directory (write test data here) */
  exportDir: string;
  /** server address inside serverNetns, reachable from clientNetns */
  address: string;
  clientAddress: string;
  serverNetns: string;
  clientNetns: string;
  /** NFSv4 pseudo path and the v3 path of the export */
  pseudo: string;
  stop(): Promise<void>;
}

export function nfsAvailable(): boolean {
  return ['/usr/bin/ganesha.nfsd', '/usr/sbin/rpcbind'].every((b) => fs.existsSync(b))
    && fs.existsSync('/usr/lib/x86_64-linux-gnu/ganesha/libfsalvfs.so');
}

const sh = (cmd: string, args: string[]) => execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const quiet = (cmd: string, args: string[]) => { try { sh(cmd, args); } catch { /* gone */ } };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function startNfs(): Promise<NfsServer> {
  const id = crypto.randomBytes(3).toString('hex');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-nfs-'));
  const exportDir = path.join(dir, 'export');
  fs.mkdirSync(exportDir, { mode: 0o777 });
  fs.mkdirSync(path.join(dir, 'recovery'));
  const serverNetns = `pvnfs-s-${id}`;
  const clientNetns = `pvnfs-c-${id}`;
  const octet = 16 + (parseInt(id, 16) % 200);
  const address = `10.251.${octet}.1`;
  const clientAddress = `10.251.${octet}.2`;
  let proc: ChildProcess | undefined;
  const server: NfsServer = {
    dir, exportDir, address, clientAddress, serverNetns, clientNetns, pseudo: '/export',
    async stop() {
      if (proc && proc.exitCode === null && proc.signalCode === null && proc.pid) {
        try { process.kill(-proc.pid, 'SIGTERM'); } catch { /* gone */ }
        const t = Date.now();
        while (proc.exitCode === null && proc.signalCode === null && Date.now() - t < 3000) await sleep(50);
        try { process.kill(-proc.pid, 'SIGKILL'); } catch { /* gone */ }
        while (proc.exitCode === null && proc.signalCode === null) await sleep(20);
      }
      quiet('ip', ['netns', 'del', serverNetns]);
      quiet('ip', ['netns', 'del', clientNetns]);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    sh('ip', ['netns', 'add', serverNetns]);
    sh('ip', ['netns', 'add', clientNetns]);
    sh('ip', ['-n', serverNetns, 'link', 'add', 'nfs0', 'type', 'veth', 'peer', 'name', 'nfs1', 'netns', clientNetns]);
    sh('ip', ['-n', serverNetns, 'addr', 'add', `${address}/30`, 'dev', 'nfs0']);
    sh('ip', ['-n', clientNetns, 'addr', 'add', `${clientAddress}/30`, 'dev', 'nfs1']);
    for (const [ns, dev] of [[serverNetns, 'nfs0'], [clientNetns, 'nfs1']]) {
      sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
      sh('ip', ['-n', ns, 'link', 'set', dev, 'up']);
    }
    const conf = path.join(dir, 'ganesha.conf');
    fs.writeFileSync(conf, `
NFS_CORE_PARAM {
  Protocols = 3, 4;
  Enable_NLM = false;
  Enable_RQUOTA = false;
}
NFSV4 {
  Graceless = true;
  RecoveryBackend = fs;
  RecoveryRoot = "${dir}/recovery";
}
NFS_KRB5 { Active_krb5 = false; }
EXPORT {
  Export_Id = 1;
  Path = "${exportDir}";
  Pseudo = /export;
  Access_Type = RW;
  Squash = No_Root_Squash;
  SecType = sys;
  Protocols = 3, 4;
  Transports = TCP;
  FSAL { Name = VFS; }
}
LOG { Default_Log_Level = WARN; }
`);
    const script = [
      'set -e',
      'mount -t tmpfs -o mode=755 pvnfs-run /run',
      'mkdir -p /run/rpcbind /run/ganesha',
      'rpcbind -w -f &',
      'for i in $(seq 50); do [ -S /run/rpcbind.sock ] && break; sleep 0.02; done',
      `exec ganesha.nfsd -F -L "${dir}/ganesha.log" -f "${conf}" -p /run/ganesha/ganesha.pid`,
    ].join('\n');
    const log = fs.openSync(path.join(dir, 'server.out'), 'a');
    proc = spawn('ip', ['netns', 'exec', serverNetns, 'unshare', '--mount', '--propagation', 'private', 'sh', '-c', script],
      { detached: true, stdio: ['ignore', log, log] });
    fs.closeSync(log);
    const deadline = Date.now() + 20_000;
    for (;;) {
      try {
        const out = sh('ip', ['netns', 'exec', clientNetns, 'rpcinfo', '-t', address, 'nfs', '4']);
        if (/ready and waiting/.test(out)) break;
      } catch (err) {
        if (proc.exitCode !== null) throw new Error(`ganesha exited: ${fs.readFileSync(path.join(dir, 'server.out'), 'utf8')} ${fs.existsSync(path.join(dir, 'ganesha.log')) ? fs.readFileSync(path.join(dir, 'ganesha.log'), 'utf8').slice(-1500) : ''}`);
        if (Date.now() > deadline) throw new Error(`NFS server not answering: ${(err as Error).message}`);
      }
      await sleep(100);
    }
    return server;
  } catch (err) {
    await server.stop();
    throw err;
  }
}
