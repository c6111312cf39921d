// NetworkDriver on CNI: one named netns per pod, the CNI chain from the conf dir run into it,
// then a tap per CNI interface wired with tc mirred (network/tap.ts) for the pod's VM.
// Per-sandbox state (the config used, capability args, the ADD result) is cached on disk
// before ADD runs, so DEL uses the same config after a daemon restart or config change.
import fs from 'node:fs';
import path from 'node:path';
import writeFileAtomic from 'write-file-atomic';
import { alreadyExists, PodvisorError, internal, invalidArgument, unavailable } from '../src/util/errors';
import type { Logger } from '../src/util/log';
import { CniError, CniResult, execPlugin, parseResult } from './cni';
import { capabilityArgs, loadNetworkConfig, NetworkConfigList, pluginStdin } from './cni-config';
import { netnsNameFor, NetworkDriver, NetworkReadiness, PodNetwork, PodNetworkRequest, SetUpOptions } from './network-driver';
import { createNetns, deleteNetns, ipJson, isNamespaceFile, netnsExists, netnsPath, renameNetns } from './netns';
import { buildPodNetwork } from './pod-network';
import { setUpTaps, TapPair } from './tap';

export interface CniNetworkOptions {
  confDir: string;
  binDirs: string[];
  logger: Logger;
  /** where per-sandbox CNI state is kept for DEL after a daemon restart */
  cacheDir: string;
  /** tests only: run the plugins inside this named netns instead of the host's */
  hostNetns?: string;
  /** per plugin invocation; default 60 s */
  pluginTimeoutMs?: number;
  /** periodic re-check of the conf dir besides fs.watch; default 5 s */
  recheckMs?: number;
}

interface CacheEntry {
  sandboxId: string;
  netnsName: string;
  /** a netns the caller owns (SetUpOptions.netns): no taps, never deleted here */
  externalNetns?: string;
  config: NetworkConfigList;
  caps: Record<string, unknown>;
  cniArgs: string;
  /** raw final ADD result, absent while ADD has not completed */
  result?: unknown;
  taps?: TapPair[];
}

const IFNAME = 'eth0';
const NOT_READY = 'NetworkPluginNotReady';

export class CniNetwork implements NetworkDriver {
  private state: NetworkReadiness = { ready: false, reason: NOT_READY, message: 'not checked yet' };
  private watcher: fs.FSWatcher | undefined;
  private readonly timer: NodeJS.Timeout;
  private readonly chains = new Map<string, Promise<unknown>>();
  private readonly log: Logger;

  constructor(private readonly o: CniNetworkOptions) {
    this.log = o.logger.child({ mod: 'cni' });
    fs.mkdirSync(o.cacheDir, { recursive: true, mode: 0o700 });
    this.watch();
    this.refresh();
    this.timer = setInterval(() => { this.watch(); this.refresh(); }, o.recheckMs ?? 5000);
    this.timer.unref();
  }

  ready(): NetworkReadiness {
    return { ...this.state };
  }

  close(): void {
    clearInterval(this.timer);
    this.watcher?.close();
    this.watcher = undefined;
  }

  setUp(req: PodNetworkRequest, opts: SetUpOptions = {}): Promise<PodNetwork> {
    checkId(req.sandboxId);
    return this.serial(req.sandboxId, () => this.doSetUp(req, opts));
  }

  tearDown(req: PodNetworkRequest, net: PodNetwork | null): Promise<void> {
    checkId(req.sandboxId);
    return this.serial(req.sandboxId, () => this.doTearDown(req, net));
  }

  // --- readiness ---------------------------------------------------------------------------

  private watch(): void {
    if (this.watcher) return;
    try {
      this.watcher = fs.watch(this.o.confDir, () => this.refresh());
      this.watcher.on('error', () => { this.watcher?.close(); this.watcher = undefined; });
    } catch {
      // the dir does not exist yet: the periodic re-check retries
    }
  }

  private refresh(): void {
    const { config, problem } = loadNetworkConfig(this.o.confDir);
    const next: NetworkReadiness = config
      ? { ready: true, reason: '', message: '' }
      : { ready: false, reason: NOT_READY, message: `Network plugin returns error: cni config uninitialized: ${problem}` };
    if (next.ready !== this.state.ready) {
      this.log.info({ ready: next.ready, config: config?.file, problem: problem || undefined }, 'CNI network readiness changed');
    }
    this.state = next;
  }

  // --- set up / tear down ----------------------------------------------------------------

  private async doSetUp(req: PodNetworkRequest, opts: SetUpOptions): Promise<PodNetwork> {
    const { config, problem } = loadNetworkConfig(this.o.confDir);
    if (!config) throw unavailable(`pod network not ready: ${problem}`);
    let caps: Record<string, unknown>;
    try {
      caps = capabilityArgs(req);
    } catch (err) {
      throw invalidArgument(`pod network: ${(err as Error).message}`);
    }
    const netnsName = netnsNameFor(req.sandboxId);
    const cached = this.readCache(req.sandboxId);
    if (cached?.result !== undefined && (cached.externalNetns ? isNamespaceFile(cached.externalNetns) : netnsExists(netnsName))) {
      throw alreadyExists(`pod network for sandbox ${req.sandboxId} is already set up`);
    }
    if (opts.netns && !isNamespaceFile(opts.netns)) throw invalidArgument(`${opts.netns} is not a network namespace`);
    const entry: CacheEntry = { sandboxId: req.sandboxId, netnsName, config, caps, cniArgs: cniArgs(req), ...(opts.netns ? { externalNetns: opts.netns } : {}) };
    if (opts.netns) return this.setUpExternal(req, entry, opts.netns);
    const log = this.log.child({ sandbox: req.sandboxId, netns: netnsName, network: config.name });
    const started = Date.now();
    try {
      const ms: Record<string, number> = {};
      const lap = (k: string) => { ms[k] = Date.now() - started; };
      this.writeCache(entry); // first: a crash from here on still leaves what DEL needs
      // a spare's netns, its taps open in it, becomes the pod netns (if that fails, so does
      // set-up, and the caller starts a fresh VM instead)
      const from = opts.adopt;
      if (from) await renameNetns(from.netns, netnsName);
      else await createNetns(netnsName); // lo comes up with the taps
      lap('netns');
      entry.result = await this.addChain(entry);
      lap('add');
      const result: CniResult = parseResult(entry.result);
      const { net, taps } = await buildPodNetwork(netnsName, netnsPath(netnsName), result, IFNAME);
      lap('read');
      entry.taps = taps;
      const [wired, other] = await Promise.allSettled([setUpTaps(netnsName, taps, from?.taps ?? []), opts.whileWiring?.(net)]);
      if (wired.status === 'rejected') throw wired.reason;
      if (other.status === 'rejected') throw other.reason;
      lap('taps');
      this.writeCache(entry);
      log.info({ ips: net.ips, nics: net.nics, ms: Date.now() - started, steps: ms }, 'pod network set up');
      return net;
    } catch (err) {
      log.warn({ err }, 'pod network set-up failed; cleaning up');
      try {
        await this.cleanUp(entry, true);
      } catch (cleanupErr) {
        log.error({ err: cleanupErr }, 'clean-up after failed set-up failed');
      }
      if (err instanceof PodvisorError) throw err;
      const msg = `failed to set up pod network "${config.name}": ${(err as Error).message}`;
      throw err instanceof CniError ? unavailable(msg) : internal(msg);
    }
  }

  /**
   * CNI into the caller's netns (a host pod's): the chain's own interface (a veth) is the pod's,
   * so there is nothing to wire and nothing to read back; the addresses come from the result.
   */
  private async setUpExternal(req: PodNetworkRequest, entry: CacheEntry, netns: string): Promise<PodNetwork> {
    const started = Date.now();
    try {
      this.writeCache(entry);
      entry.result = await this.addChain(entry);
      const result: CniResult = parseResult(entry.result);
      this.writeCache(entry);
      const isV4 = (a: string) => !a.includes(':');
      const ips = result.ips.map((ip) => ip.address.split('/')[0]).sort((a, b) => Number(!isV4(a)) - Number(!isV4(b)));
      const net: PodNetwork = { netnsName: '', netnsPath: netns, nics: [], interfaces: [], routes: [], ips };
      const d = result.dns;
      if (d && (d.nameservers?.length || d.search?.length || d.domain)) {
        net.dns = { nameservers: d.nameservers ?? [], search: d.search ?? [], options: d.options ?? [], ...(d.domain ? { domain: d.domain } : {}) };
      }
      this.log.info({ sandbox: req.sandboxId, netns, ips, ms: Date.now() - started }, 'pod network set up');
      return net;
    } catch (err) {
      this.log.warn({ sandbox: req.sandboxId, err }, 'pod network set-up failed; cleaning up');
      await this.cleanUp(entry, true).catch((e) => this.log.error({ err: e }, 'clean-up after failed set-up failed'));
      if (err instanceof PodvisorError) throw err;
      const msg = `failed to set up pod network "${entry.config.name}": ${(err as Error).message}`;
      throw err instanceof CniError ? unavailable(msg) : internal(msg);
    }
  }

  private async doTearDown(req: PodNetworkRequest, net: PodNetwork | null): Promise<void> {
    let entry = this.readCache(req.sandboxId);
    if (!entry) {
      // no cached state (never set up, already torn down, or cache lost): DEL with today's config
      const { config } = loadNetworkConfig(this.o.confDir);
      const external = net && !net.netnsName ? net.netnsPath : undefined;
      const netnsName = net?.netnsName || netnsNameFor(req.sandboxId);
      let caps: Record<string, unknown> = {};
      try { caps = capabilityArgs(req); } catch { /* DEL does not need them */ }
      if (config) entry = { sandboxId: req.sandboxId, netnsName, config, caps, cniArgs: cniArgs(req), ...(external ? { externalNetns: external } : {}) };
      else if (external) {
        this.log.warn({ sandbox: req.sandboxId }, 'no CNI config and no cached state: skipping CNI DEL');
        return;
      } else {
        this.log.warn({ sandbox: req.sandboxId }, 'no CNI config and no cached state: skipping CNI DEL');
        await deleteNetns(netnsName); // its taps end with it
        return;
      }
    }
    try {
      await this.cleanUp(entry, false);
    } catch (err) {
      const msg = `failed to tear down pod network "${entry.config.name}" of sandbox ${req.sandboxId}: ${(err as Error).message}`;
      throw err instanceof CniError ? unavailable(msg) : internal(msg);
    }
    this.log.info({ sandbox: req.sandboxId, netns: entry.netnsName }, 'pod network torn down');
  }

  /**
   * CNI DEL (reverse order, cached ADD result as prevResult when there is one), then taps, tc
   * and the netns, then the cache entry. With `bestEffort` every step runs whatever fails;
   * otherwise a failed DEL keeps the netns and the cache entry so a retry can finish the job.
   */
  private async cleanUp(entry: CacheEntry, bestEffort: boolean): Promise<void> {
    const errors: Error[] = [];
    if (entry.externalNetns) {
      // the caller's netns: DEL only (with no path once it is gone, as for ours)
      const path = isNamespaceFile(entry.externalNetns) ? entry.externalNetns : '';
      for (const plugin of [...entry.config.plugins].reverse()) {
        try {
          await execPlugin(plugin.type, { ...this.execBase(entry, 'DEL', path), stdin: pluginStdin(entry.config, plugin, entry.caps, entry.result) });
        } catch (err) {
          errors.push(err as Error);
        }
      }
      if (errors.length && !bestEffort) throw errors[0];
      fs.rmSync(this.cachePath(entry.sandboxId), { force: true });
      if (errors.length) throw errors[0];
      return;
    }
    const netns = netnsExists(entry.netnsName) ? netnsPath(entry.netnsName) : '';
    for (const plugin of [...entry.config.plugins].reverse()) {
      try {
        await execPlugin(plugin.type, {
          ...this.execBase(entry, 'DEL', netns),
          stdin: pluginStdin(entry.config, plugin, entry.caps, entry.result),
        });
      } catch (err) {
        errors.push(err as Error);
      }
    }
    if (errors.length && !bestEffort) throw errors[0];
    // the taps and their tc redirects live in this netns: they end with it (the VM that held
    // them is gone), no `tc`/`ip` per tap needed
    await deleteNetns(entry.netnsName);
    fs.rmSync(this.cachePath(entry.sandboxId), { force: true });
    if (errors.length) throw errors[0];
  }

  private async addChain(entry: CacheEntry): Promise<unknown> {
    let prev: unknown;
    for (const plugin of entry.config.plugins) {
      prev = await execPlugin(plugin.type, {
        ...this.execBase(entry, 'ADD', entry.externalNetns ?? netnsPath(entry.netnsName)),
        stdin: pluginStdin(entry.config, plugin, entry.caps, prev),
      });
    }
    return prev;
  }

  private execBase(entry: CacheEntry, command: 'ADD' | 'DEL', netns: string) {
    return {
      command, containerId: entry.sandboxId, netns, ifName: IFNAME, args: entry.cniArgs,
      binDirs: this.o.binDirs, timeoutMs: this.o.pluginTimeoutMs ?? 60_000, hostNetns: this.o.hostNetns,
    };
  }

  // --- per-sandbox state ---------------------------------------------------------------------

  private cachePath(id: string): string {
    return path.join(this.o.cacheDir, `${id}.json`);
  }

  private readCache(id: string): CacheEntry | undefined {
    try {
      return JSON.parse(fs.readFileSync(this.cachePath(id), 'utf8')) as CacheEntry;
    } catch {
      return undefined;
    }
  }

  private writeCache(entry: CacheEntry): void {
    writeFileAtomic.sync(this.cachePath(entry.sandboxId), JSON.stringify(entry), { mode: 0o600 });
  }

  /** Runs set-up and tear-down of one sandbox one after the other; sandboxes run in parallel. */
  private serial<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const p = (this.chains.get(id) ?? Promise.resolve()).catch(() => undefined).then(fn);
    const tail = p.catch(() => undefined);
    this.chains.set(id, tail);
    void tail.then(() => { if (this.chains.get(id) === tail) this.chains.delete(id); });
    return p;
  }
}

function checkId(id: string): void {
  if (typeof id !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/.test(id)) throw invalidArgument(`invalid sandbox id "${id}"`);
}

function cniArgs(req: PodNetworkRequest): string {
  const clean = (s: string) => String(s ?? '').replace(/[;=]/g, '');
  return [
    'IgnoreUnknown=1',
    `K8S_POD_NAMESPACE=${clean(req.namespace)}`,
    `K8S_POD_NAME=${clean(req.name)}`,
    `K8S_POD_INFRA_CONTAINER_ID=${clean(req.sandboxId)}`,
    `K8S_POD_UID=${clean(req.uid)}`,
  ].join(';');
}
