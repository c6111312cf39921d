// Shared set-up for the network tests: a private "host" netns in which the CNI plugins run
// (so the test bridge, portmap's iptables rules and all test traffic stay out of the real
// host), a temp conf dir, a temp IPAM dataDir, and leak checks.
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { silentLogger } from '../../src/util/log';
import { CniNetwork } from '../../network/cni-network';
import type { PodNetworkRequest } from '../../network/network-driver';

export const BIN_DIRS = ['/opt/cni/bin', '/usr/lib/cni'];

export function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}
export function shQuiet(cmd: string, args: string[]): string {
  try { return sh(cmd, args); } catch { return ''; }
}

export function randomId(): string {
  return crypto.randomBytes(32).toString('hex');
}

export function podRequest(over: Partial<PodNetworkRequest> = {}): PodNetworkRequest {
  const id = over.sandboxId ?? randomId();
  return { sandboxId: id, name: `pod-${id.slice(0, 6)}`, namespace: 'default', uid: crypto.randomUUID(), portMappings: [], annotations: {}, ...over };
}

export interface Env {
  hostNetns: string;
  bridge: string;
  dir: string;
  confDir: string;
  dataDir: string;
  cacheDir: string;
  netName: string;
  driver(opts?: { recheckMs?: number; confDir?: string }): CniNetwork;
  /** writes the standard test conflist (bridge + host-local v4/v6 + portmap + loopback) */
  writeConflist(over?: { ranges?: unknown; plugins?: unknown[]; file?: string }): string;
  cleanup(): void;
}

export function makeEnv(tag: string): Env {
  const suffix = crypto.randomBytes(3).toString('hex');
  const hostNetns = `pvt-h${tag}-${suffix}`;
  const bridge = `pvt${tag}${suffix}`.slice(0, 15);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `pvnet-${tag}-`));
  const confDir = path.join(dir, 'net.d');
  const dataDir = path.join(dir, 'ipam');
  const cacheDir = path.join(dir, 'cache');
  fs.mkdirSync(confDir);
  sh('ip', ['netns', 'add', hostNetns]);
  sh('ip', ['-n', hostNetns, 'link', 'set', 'lo', 'up']);
  const drivers: CniNetwork[] = [];
  const netName = `pvtest-${tag}`;
  const env: Env = {
    hostNetns, bridge, dir, confDir, dataDir, cacheDir, netName,
    driver(opts = {}) {
      const d = new CniNetwork({
        confDir: opts.confDir ?? confDir, binDirs: BIN_DIRS, logger: silentLogger, cacheDir, hostNetns,
        pluginTimeoutMs: 30_000, recheckMs: opts.recheckMs,
      });
      drivers.push(d);
      return d;
    },
    writeConflist(over = {}) {
      const conf = {
        cniVersion: '1.0.0',
        name: netName,
        plugins: over.plugins ?? [
          {
            type: 'bridge', bridge, isGateway: true, ipMasq: false, hairpinMode: true,
            ipam: {
              type: 'host-local', dataDir,
              ranges: over.ranges ?? [[{ subnet: '10.199.0.0/24' }], [{ subnet: 'fd00:199::/64' }]],
              routes: [{ dst: '0.0.0.0/0' }, { dst: '::/0' }],
            },
          },
          { type: 'portmap', capabilities: { portMappings: true }, snat: true },
          { type: 'loopback' },
        ],
      };
      const file = path.join(confDir, over.file ?? '10-pvtest.conflist');
      fs.writeFileSync(file, JSON.stringify(conf, null, 2));
      return file;
    },
    cleanup() {
      for (const d of drivers) d.close();
      shQuiet('ip', ['netns', 'delete', hostNetns]);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  return env;
}

/** Everything a pod may leave behind, as strings, for "nothing left" assertions. */
export function leftovers(env: Env, sandboxId: string, liveVeths = 0): string[] {
  const found: string[] = [];
  const nsName = `pv-${sandboxId.slice(0, 16)}`;
  if (shQuiet('ip', ['netns', 'list']).split('\n').some((l) => l.split(' ')[0] === nsName)) found.push(`netns ${nsName}`);
  if (fs.existsSync(`/run/netns/${nsName}`)) found.push(`file /run/netns/${nsName}`);
  // veths in the test host netns other than the bridge
  const links = JSON.parse(shQuiet('ip', ['-n', env.hostNetns, '-j', 'link', 'show', 'type', 'veth']) || '[]');
  if (links.length !== liveVeths) found.push(`veths ${links.map((l: any) => l.ifname).join(',')} (expected ${liveVeths})`);
  const leaseDir = path.join(env.dataDir, env.netName);
  if (fs.existsSync(leaseDir)) {
    for (const f of fs.readdirSync(leaseDir)) {
      if (f === 'lock' || f.startsWith('last_reserved_ip')) continue;
      if (fs.readFileSync(path.join(leaseDir, f), 'utf8').includes(sandboxId)) found.push(`lease ${f}`);
    }
  }
  const nat = shQuiet('ip', ['netns', 'exec', env.hostNetns, 'iptables', '-t', 'nat', '-S']);
  for (const line of nat.split('\n')) {
    if (line.includes(sandboxId) || /^-N CNI-DN-/.test(line)) found.push(`iptables ${line}`);
  }
  if (fs.existsSync(path.join(env.cacheDir, `${sandboxId}.json`))) found.push('cache entry');
  return found;
}
