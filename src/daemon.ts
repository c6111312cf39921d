// Wires the daemon together: config → hypervisor → images → pods/containers → gRPC server, and
// the metrics endpoint ([metrics] address) fed by each layer's observer.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import { Config, packageRoot, parseHostPort } from './config/config';
import { containerHandlers } from './cri/container';
import { checkpointHandlers } from './cri/checkpoint';
import { CheckpointManager } from './runtime/checkpoints';
import { eventHandlers, EventStreamStats } from './cri/events';
import { metricsHandlers } from './cri/metrics';
import { imageHandlers } from './cri/image';
import { runtimeInfoHandlers } from './cri/runtime-info';
import { sandboxHandlers } from './cri/sandbox';
import { streamingHandlers } from './cri/streaming';
import { statsHandlers } from './cri/stats';
import { StatsCollector } from './runtime/stats';
import { StreamingServer } from './streaming/server';
import { RuntimeStreamingBackend } from './streaming/runtime-backend';
import { ImageManager } from './image/manager';
import type { Logger } from './util/log';
import { ContainerManager } from './runtime/containers';
import { SandboxManager } from './runtime/sandboxes';
import { PodBackends } from './runtime/pod-backend';
import { bootSize } from './runtime/resize';
import { VmPodBackend } from './runtime/backends/vm/vm-backend';
import { HostPodBackend } from './runtime/backends/host/host-backend';
import { startServer } from './server';
import { chooseAccelerator } from './vm/accel';
import { launcherPath, QemuHypervisor } from './vm/qemu';
import { VmPool } from './vm/pool';
import { CniNetwork } from '../network/cni-network';
import { VolumeManager } from '../storage/volume-manager';
import { ensureDir } from './util/dirs';
import { DaemonMetrics } from './metrics/daemon-metrics';
import { type MetricsEndpoint, serveMetrics } from './metrics/endpoint';

export const VERSION: string = JSON.parse(fs.readFileSync(path.join(packageRoot(), 'package.json'), 'utf8')).version;

/** Identifies the guest build: templates made from another kernel or agent are never cloned. */
export function guestDigest(cfg: Config): string {
  return [cfg.vm.kernel, cfg.vm.initramfs].map((f) => {
    const st = fs.statSync(f);
    return `${f}:${st.size}:${Math.trunc(st.mtimeMs)}`;
  }).join('|');
}

/** How long in-flight CRI calls may finish when the daemon stops. */
const SHUTDOWN_GRACE_MS = 5_000;

export class Daemon {
  private server?: grpc.Server;
  /** aborted when stop() begins */
  private readonly stopping = new AbortController();
  private network?: CniNetwork;
  private streaming?: StreamingServer;
  private pool?: VmPool;
  private backends?: PodBackends;
  private metricsEndpoint?: MetricsEndpoint;
  /** the daemon's instruments (kept also when the endpoint is off: they cost next to nothing) */
  readonly metrics = new DaemonMetrics();

  constructor(readonly cfg: Config, readonly logger: Logger) {}

  async start(): Promise<void> {
    const { cfg, logger } = this;
    await ensureDir(cfg.root, 0o700);
    await ensureDir(cfg.state, 0o711);
    const metrics = this.metrics;
    // first: an address that cannot be served stops the daemon before it starts any VM
    if (cfg.metrics.address) {
      const { host, port } = parseHostPort(cfg.metrics.address);
      this.metricsEndpoint = await serveMetrics(metrics, host, port, logger);
    }
    const guest = { binary: cfg.vm.qemu, kernel: cfg.vm.kernel, initramfs: cfg.vm.initramfs, kernelArgs: cfg.vm.kernelArgs, launcher: cfg.vm.launcher };
    const qemuOpts = { ...guest, tcgCodeMiB: cfg.vm.tcgCodeMiB, ksm: cfg.vm.ksm, logCapBytes: cfg.vm.logCapKiB * 1024, logger };
    const accelerator = await chooseAccelerator(cfg.vm.accelerator, qemuOpts, cfg.root, cfg.state, logger);
    // the driver, and the VM pool (templates + warm spares) above it
    const driver = new QemuHypervisor({ ...qemuOpts, accelerator });
    const pool = new VmPool({
      driver,
      logger,
      agentCalls: metrics.agentCalls,
      templates: cfg.vm.template ? {
        dir: cfg.vm.templateDir,
        guestDigest: () => guestDigest(cfg),
        prebuild: this.sizeClasses(),
        spares: cfg.vm.templateSpares,
        sparesDir: path.join(cfg.state, 'spares'),
        // a default pod's VM boots at its resize ceiling: spares are of that class
        defaultSize: bootSize({ vcpus: cfg.vm.defaultVcpus, memoryMiB: cfg.vm.defaultMemoryMiB }, cfg.vm),
      } : undefined,
    });
    this.pool = pool;
    await pool.open();

    const images = new ImageManager({ root: path.join(cfg.root, 'images'), configDir: cfg.image.configDir, logger, pinned: cfg.image.pinned, observe: metrics.pulls });
    await images.init();
    const network = new CniNetwork({ confDir: cfg.cni.confDir, binDirs: cfg.cni.binDirs, logger, cacheDir: path.join(cfg.root, 'cni') });
    this.network = network;
    const volumes = await VolumeManager.create({ stateDir: path.join(cfg.root, 'storage'), logger });
    // the pod backends, one registration line each (runtime/pod-backend.ts)
    const backends = new PodBackends()
      .register(new VmPodBackend({ cfg, hypervisor: pool, network, spares: pool.spares, volumes, logger, agentCalls: metrics.agentCalls }))
      .register(new HostPodBackend({ cfg, launcher: launcherPath(cfg.vm), network, logger }));
    this.backends = backends;
    const sandboxes = new SandboxManager(cfg, backends, volumes, logger, metrics.sandboxes);
    const containers = new ContainerManager(cfg.root, sandboxes, images, volumes, logger);
    await containers.restore(); // re-acquires the images of existing containers
    await images.collectGarbage();
    await sandboxes.restore();
    await containers.undoInterrupted();

    const streaming = new StreamingServer(new RuntimeStreamingBackend(containers, sandboxes, logger), {
      address: cfg.streaming.address,
      port: cfg.streaming.port,
      tls: cfg.streaming.tlsCert ? { cert: cfg.streaming.tlsCert, key: cfg.streaming.tlsKey } : undefined,
      logger,
    });
    await streaming.start();
    this.streaming = streaming;
    // the container filesystem: ImageFsInfo reports it, every writable layer's fs_id names it
    const containerFsDir = cfg.state;
    const stats = new StatsCollector(sandboxes, containers, logger, containerFsDir);
    const events = new EventStreamStats();
    metrics.setSources({
      backends: backends.all().map((b) => b.kind),
      podsRunning: () => sandboxes.running(),
      containers: () => {
        const n: Record<string, number> = {};
        for (const { rec } of containers.containers.values()) n[rec.state] = (n[rec.state] ?? 0) + 1;
        return n;
      },
      pool: () => pool.counts(),
      events,
    });
    const runtime = {
      ...runtimeInfoHandlers({ version: VERSION, root: cfg.root, backends, handlers: cfg.runtime.handlers, network, config: { ...cfg, accelerator }, cgroupDriver: cfg.cgroupDriver }),
      ...sandboxHandlers(sandboxes, containers),
      ...containerHandlers(containers, images),
      ...checkpointHandlers(new CheckpointManager(sandboxes, containers, images, logger)),
      ...streamingHandlers(streaming),
      ...statsHandlers(stats, sandboxes, containers),
      ...metricsHandlers(stats),
    };
    this.server = await startServer(cfg.socket, runtime, imageHandlers(images, { containerFsDir }), logger, eventHandlers(containers, sandboxes, images, this.stopping.signal, events), metrics.grpcCall);
    logger.info({ socket: cfg.socket, accel: accelerator, version: VERSION, streaming: streaming.baseUrl }, 'podvisor serving CRI');
  }

  /** prebuild_templates as size classes; bad entries are logged and skipped */
  private sizeClasses(): Array<{ vcpus: number; memoryMiB: number; nics: number }> {
    return this.cfg.vm.prebuildTemplates.flatMap((cls) => {
      const [vcpus, memoryMiB, nics = 0] = cls.split('x').map(Number);
      if (vcpus > 0 && memoryMiB > 0 && nics >= 0) return [{ vcpus, memoryMiB, nics }];
      this.logger.error({ cls }, 'bad template size class in config (want <vcpus>x<MiB>[x<nics>])');
      return [];
    });
  }

  /** Stops serving. Pod VMs keep running: a restarted daemon picks them up again. */
  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.stopping.abort(); // long-lived streams (container events) end now, not at the grace time
    // In-flight calls get a few seconds (kubelet's exec probes can run for minutes): then they
    // are cut, so the daemon always stops and takes its spares and sockets with it.
    await new Promise<void>((resolve) => {
      const cut = setTimeout(() => {
        this.logger.warn({ graceMs: SHUTDOWN_GRACE_MS }, 'calls still running at shutdown: cancelling them');
        server.forceShutdown();
        resolve();
      }, SHUTDOWN_GRACE_MS);
      server.tryShutdown(() => {
        clearTimeout(cut);
        resolve();
      });
    });
    // each step runs even when one before it failed: the spares and the socket must go anyway
    const steps: Array<[string, () => unknown]> = [
      ['network', () => this.network?.close()],
      ['metrics', () => this.metricsEndpoint?.close()],
      ['streaming', () => this.streaming?.stop()],
      ['vm pool', () => this.pool?.close()],
      ...(this.backends?.all() ?? []).map((b): [string, () => unknown] => [`${b.kind} pod backend`, () => b.close?.()]),
      ['socket', () => fsp.rm(this.cfg.socket, { force: true })],
    ];
    let failed: unknown;
    for (const [step, run] of steps) {
      try {
        await run();
      } catch (err) {
        this.logger.error({ err, step }, 'a stop step failed');
        failed ??= err;
      }
    }
    if (failed) throw failed;
  }
}
