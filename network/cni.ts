// The CNI exec protocol (spec 1.0): run a plugin binary with CNI_* in the environment and the
// network config on stdin; success is exit 0 with a result on stdout, failure a non-zero exit
// with an error object {cniVersion, code, msg, details} on stdout. Written by hand: it is a
// few dozen lines, and the plugins themselves are the real dependency.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export type CniCommand = 'ADD' | 'DEL' | 'CHECK' | 'VERSION';

export class CniError extends Error {
  constructor(readonly plugin: string, readonly command: string, readonly code: number | null, message: string) {
    super(message);
    this.name = 'CniError';
  }
}

export interface ExecArgs {
  command: CniCommand;
  containerId: string;
  netns: string;
  ifName: string;
  args: string;
  binDirs: string[];
  stdin: object;
  timeoutMs: number;
  /** run the plugin inside this named netns (`ip netns exec`): tests use a private "host" */
  hostNetns?: string;
}

/** Finds the plugin binary in the plugin dirs, in order. */
export function findPlugin(type: string, binDirs: string[]): string {
  for (const dir of binDirs) {
    const p = path.join(dir, type);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      if (fs.statSync(p).isFile()) return p;
    } catch {
      /* next dir */
    }
  }
  throw new CniError(type, 'find', null, `CNI plugin "${type}" not found in ${binDirs.join(':')}`);
}

/** Executes one plugin; resolves with its parsed stdout (null when empty, e.g. DEL). */
export function execPlugin(type: string, a: ExecArgs): Promise<any> {
  const bin = findPlugin(type, a.binDirs);
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
    CNI_COMMAND: a.command,
    CNI_CONTAINERID: a.containerId,
    CNI_NETNS: a.netns,
    CNI_IFNAME: a.ifName,
    CNI_ARGS: a.args,
    CNI_PATH: a.binDirs.join(':'),
  };
  const [cmd, argv] = a.hostNetns ? ['ip', ['netns', 'exec', a.hostNetns, bin]] : [bin, []];
  const what = `CNI plugin ${type} ${a.command}`;
  return new Promise((resolve, reject) => {
    // own process group: a timeout kills the plugin and anything it started
    const child = spawn(cmd, argv, { env, stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    const out: Buffer[] = [];
    const errOut: Buffer[] = [];
    let done = false;
    const timer = setTimeout(() => {
      done = true;
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        child.kill('SIGKILL');
      }
      const stderr = Buffer.concat(errOut).toString('utf8').trim().slice(0, 4000);
      reject(new CniError(type, a.command, null, `${what}: timed out after ${a.timeoutMs} ms${stderr ? `: ${stderr}` : ''}`));
    }, a.timeoutMs);
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => errOut.push(b));
    child.stdin.on('error', () => undefined); // a plugin that exits without reading stdin
    child.on('error', (err) => {
      clearTimeout(timer);
      if (done) return;
      done = true;
      reject(new CniError(type, a.command, null, `${what}: cannot run ${bin}: ${err.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (done) return;
      done = true;
      const stdout = Buffer.concat(out).toString('utf8').trim();
      const stderr = Buffer.concat(errOut).toString('utf8').trim().slice(0, 4000);
      let parsed: any = null;
      try {
        parsed = stdout ? JSON.parse(stdout) : null;
      } catch {
        /* handled below */
      }
      if (code !== 0) {
        let msg = `${what} failed (exit ${code ?? signal})`;
        if (parsed && typeof parsed === 'object' && 'msg' in parsed) {
          msg += `: ${parsed.msg}${parsed.details ? ` (${parsed.details})` : ''} [code ${parsed.code}]`;
        } else if (stdout) {
          msg += `: ${stdout.slice(0, 2000)}`;
        }
        if (stderr) msg += `; stderr: ${stderr}`;
        return reject(new CniError(type, a.command, typeof parsed?.code === 'number' ? parsed.code : null, msg));
      }
      if (stdout && parsed === null) return reject(new CniError(type, a.command, null, `${what}: invalid JSON on stdout: ${stdout.slice(0, 500)}`));
      resolve(parsed);
    });
    child.stdin.end(JSON.stringify(a.stdin));
  });
}

/** A CNI result (0.3.x/0.4.0/1.0.0 share this shape; 0.x adds ips[].version). */
export interface CniResult {
  interfaces: Array<{ name: string; mac?: string; mtu?: number; sandbox?: string }>;
  ips: Array<{ address: string; gateway?: string; interface?: number }>;
  routes: Array<{ dst: string; gw?: string }>;
  dns?: { nameservers?: string[]; domain?: string; search?: string[]; options?: string[] };
}

/** Validates and normalises a result. Versions before 0.3.0 (ip4/ip6 objects) are refused. */
export function parseResult(raw: any): CniResult {
  if (!raw || typeof raw !== 'object') throw new Error('CNI result is empty');
  const v = String(raw.cniVersion ?? '');
  if (!/^(0\.3\.[01]|0\.4\.0|1\.\d+\.\d+)$/.test(v)) throw new Error(`unsupported CNI result version "${v}"`);
  const arr = (x: unknown) => (Array.isArray(x) ? x : []);
  const interfaces = arr(raw.interfaces).map((i: any) => ({
    name: String(i?.name ?? ''), mac: i?.mac ? String(i.mac) : undefined,
    mtu: typeof i?.mtu === 'number' ? i.mtu : undefined, sandbox: i?.sandbox ? String(i.sandbox) : undefined,
  }));
  const ips = arr(raw.ips).map((ip: any) => {
    if (typeof ip?.address !== 'string' || !ip.address.includes('/')) throw new Error(`CNI result has an invalid ip ${JSON.stringify(ip)}`);
    return { address: ip.address, gateway: ip.gateway ? String(ip.gateway) : undefined, interface: typeof ip.interface === 'number' ? ip.interface : undefined };
  });
  const routes = arr(raw.routes).map((r: any) => ({ dst: String(r?.dst ?? ''), gw: r?.gw ? String(r.gw) : undefined }));
  const dns = raw.dns && typeof raw.dns === 'object' ? raw.dns : undefined;
  return { interfaces, ips, routes, dns };
}
