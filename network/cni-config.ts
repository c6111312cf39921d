// CNI network configuration: picking the config file from the conf dir (first .conflist,
// .conf or .json by file name, as libcni/containerd do), normalising a single .conf into a
// list, and the runtimeConfig capabilities (portMappings, dns, bandwidth) built from the CRI.
import fs from 'node:fs';
import path from 'node:path';
import type { PodNetworkRequest } from './network-driver';

export interface PluginConf {
  type: string;
  capabilities?: Record<string, boolean>;
  [key: string]: unknown;
}

export interface NetworkConfigList {
  name: string;
  cniVersion: string;
  plugins: PluginConf[];
  /** the file it was read from */
  file: string;
}

const EXTENSIONS = ['.conflist', '.conf', '.json'];

function parseConfigFile(file: string): NetworkConfigList {
  const raw = JSON.parse(fs.readFileSync(file, 'utf8'));
  if (typeof raw !== 'object' || raw === null) throw new Error('not a JSON object');
  const list = file.endsWith('.conflist') || Array.isArray(raw.plugins)
    ? raw
    : { name: raw.name, cniVersion: raw.cniVersion, plugins: [raw] };
  if (typeof list.name !== 'string' || !list.name) throw new Error('no network name');
  if (typeof list.cniVersion !== 'string' || !list.cniVersion) throw new Error('no cniVersion');
  if (!Array.isArray(list.plugins) || list.plugins.length === 0) throw new Error('no plugins');
  for (const p of list.plugins) {
    if (typeof p !== 'object' || p === null || typeof p.type !== 'string' || !/^[A-Za-z0-9_.-]+$/.test(p.type)) {
      throw new Error('a plugin has no valid "type"');
    }
  }
  return { name: list.name, cniVersion: list.cniVersion, plugins: list.plugins, file };
}

/**
 * Loads the first valid config in `confDir` (files sorted by name). Returns the list, or
 * null with the reason (no dir, no file, or every file invalid).
 */
export function loadNetworkConfig(confDir: string): { config: NetworkConfigList | null; problem: string } {
  let names: string[];
  try {
    names = fs.readdirSync(confDir).filter((n) => EXTENSIONS.includes(path.extname(n))).sort();
  } catch (err) {
    return { config: null, problem: `cannot read CNI config dir ${confDir}: ${(err as Error).message}` };
  }
  if (names.length === 0) return { config: null, problem: `no network config found in ${confDir}` };
  const problems: string[] = [];
  for (const n of names) {
    const file = path.join(confDir, n);
    try {
      return { config: parseConfigFile(file), problem: '' };
    } catch (err) {
      problems.push(`${file}: ${(err as Error).message}`);
    }
  }
  return { config: null, problem: `no valid network config in ${confDir}: ${problems.join('; ')}` };
}

/** Kubernetes resource quantity ("10M", "1Gi", "500k", "100m") → number. */
export function parseQuantity(q: string): number {
  const m = /^\s*([0-9]+(?:\.[0-9]+)?)\s*(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?\s*$/.exec(q);
  if (!m) throw new Error(`invalid quantity "${q}"`);
  const mult: Record<string, number> = {
    '': 1, m: 1e-3, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18,
    Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60,
  };
  return Math.ceil(parseFloat(m[1]) * mult[m[2] ?? '']);
}

const MAX_BURST = 2 ** 32 - 1; // as containerd: Kubernetes has no burst setting

/**
 * The runtimeConfig values the runtime can offer; each plugin receives only those named in its
 * `capabilities`. Throws on an invalid bandwidth annotation (kubelet validates these too).
 */
export function capabilityArgs(req: PodNetworkRequest): Record<string, unknown> {
  const caps: Record<string, unknown> = {};
  caps.portMappings = (req.portMappings ?? [])
    .filter((p) => Number(p?.host_port ?? p?.hostPort ?? 0) > 0)
    .map((p) => {
      const m: Record<string, unknown> = {
        hostPort: Number(p.host_port ?? p.hostPort),
        containerPort: Number(p.container_port ?? p.containerPort),
        protocol: String(p.protocol ?? 'TCP').toLowerCase(),
      };
      const hostIP = p.host_ip ?? p.hostIp ?? p.hostIP;
      if (hostIP) m.hostIP = String(hostIP);
      return m;
    });
  if (req.dns) caps.dns = { servers: req.dns.servers ?? [], searches: req.dns.searches ?? [], options: req.dns.options ?? [] };
  const bw: Record<string, number> = {};
  const rate = (key: string) => {
    const v = req.annotations?.[key];
    if (v === undefined) return undefined;
    const n = parseQuantity(v);
    if (n < 1000 || n > 1e15) throw new Error(`${key} ${v} is out of range (1k..1P bits/s)`);
    return n;
  };
  const ingress = rate('kubernetes.io/ingress-bandwidth');
  const egress = rate('kubernetes.io/egress-bandwidth');
  if (ingress !== undefined) Object.assign(bw, { ingressRate: ingress, ingressBurst: MAX_BURST });
  if (egress !== undefined) Object.assign(bw, { egressRate: egress, egressBurst: MAX_BURST });
  if (Object.keys(bw).length) caps.bandwidth = bw;
  return caps;
}

/** The stdin of one plugin in the list, per the CNI spec (name, cniVersion, runtimeConfig, prevResult). */
export function pluginStdin(
  list: Pick<NetworkConfigList, 'name' | 'cniVersion'>,
  plugin: PluginConf,
  caps: Record<string, unknown>,
  prevResult: unknown,
): Record<string, unknown> {
  const conf: Record<string, unknown> = { ...plugin, name: list.name, cniVersion: list.cniVersion };
  const runtimeConfig: Record<string, unknown> = { ...((plugin.runtimeConfig as object) ?? {}) };
  for (const [cap, wanted] of Object.entries(plugin.capabilities ?? {})) {
    if (wanted && caps[cap] !== undefined) runtimeConfig[cap] = caps[cap];
  }
  delete conf.runtimeConfig;
  if (Object.keys(runtimeConfig).length) conf.runtimeConfig = runtimeConfig;
  if (prevResult !== undefined && prevResult !== null) conf.prevResult = prevResult;
  return conf;
}
