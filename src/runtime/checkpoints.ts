// CheckpointPod, RestorePod and CheckpointContainer. A pod checkpoint is the whole pod at one
// instant, taken by its backend (the VM backend saves the VM: every container's processes,
// memory and writable layer live in it) while the pod keeps running, plus the records that
// make it a pod again: its config, image mounts, containers, logs (checkpoint-format.ts).
// RestorePod makes a new pod of it: new sandbox and container ids, the config given, a fresh
// network, identity and cgroup, its containers running where they were. Containers' host-path
// mounts (through the VM's share) come back in the copy as the restored pod's own host paths,
// bound where the checkpointed pod had its own (so the copy's mounts must be the same ones, in
// the same order). Refused cleanly (and before any pod is made): volumes the pod holds outside
// itself (block and NFS volumes, which live on in the original), another backend's or another
// host's checkpoint, a damaged one, images this node does not have, other mounts.
// CheckpointContainer gives kubelet's checkpoint API an archive: the pod checkpoint of the
// container's pod with the container's own spec and log beside it (a VM runtime cannot honestly
// cut one container out of a running kernel); such a container comes back with RestorePod of the
// unpacked archive, never on its own.
import crypto from 'node:crypto';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { ContainerConfig, PodSandboxConfig } from '../../cri-api/messages';
import type { ImageManager } from '../image/manager';
import type { Logger } from '../util/log';
import { failedPrecondition, invalidArgument, notFound } from '../util/errors';
import { run } from '../util/exec-file';
import { outputDir, readCheckpoint, writeCheckpoint, type CheckpointedContainer } from './checkpoint-format';
import { resolveLogPath, type ContainerManager } from './containers';
import type { PodRestoreSource } from './pod-backend';
import type { ContainerRecord } from './records';
import type { SandboxManager } from './sandboxes';

/** The container's own part of a CheckpointContainer archive, beside the pod checkpoint. */
export const CONTAINER_FILE = 'container.json';

export interface RestoredPod {
  podSandboxId: string;
  containers: Array<{ name: string; id: string }>;
}

export class CheckpointManager {
  constructor(
    private readonly sandboxes: SandboxManager,
    private readonly containers: ContainerManager,
    private readonly images: ImageManager,
    private readonly logger: Logger,
  ) {}

  /**
   * The pod into `outputPath` (new or empty), running on after; options: stop = "true" stops
   * the pod once it is saved (StopPodSandbox). `containerIds`, when given, must be all of the
   * pod's: a checkpoint holds the whole pod.
   */
  async checkpointPod(id: string, outputPath: string | undefined, containerIds: string[] = [], options: Record<string, string> = {}): Promise<void> {
    const stop = boolOption(options, 'stop');
    for (const k of Object.keys(options)) if (k !== 'stop') throw invalidArgument(`checkpoint option ${JSON.stringify(k)} is not known (known: stop)`);
    const sandbox = this.sandboxes.get(id);
    const dir = await outputDir(outputPath);
    const t0 = Date.now();
    try {
      let recs: ContainerRecord[] = [];
      const { sb, saved } = await this.sandboxes.checkpoint(sandbox.rec.id, dir, {
        resume: true,
        check: (sb) => {
          recs = this.containers.list({ pod_sandbox_id: sb.rec.id }).filter((r) => !r.pending);
          const mine = new Set(recs.map((r) => r.id));
          const asked = new Set(containerIds.map((c) => this.containers.get(c).rec.id));
          if (asked.size && (asked.size !== mine.size || [...asked].some((c) => !mine.has(c)))) {
            throw invalidArgument('a pod checkpoint holds every container of the pod: leave container_ids empty or name them all');
          }
          const held = recs.filter((r) => r.volumes.length);
          if (held.length) {
            throw failedPrecondition(`container(s) ${held.map((r) => r.config.metadata?.name).join(', ')} hold block or NFS volumes, which a checkpoint cannot take along (they live on outside the pod)`);
          }
          return Object.fromEntries(recs.map((r) => [r.id, r.config.metadata?.name ?? r.id]));
        },
      });
      const files = [...saved.files];
      const containers: CheckpointedContainer[] = [];
      await fsp.mkdir(path.join(dir, 'logs'), { mode: 0o700 });
      const podUid = sb.rec.config.metadata?.uid ?? '';
      for (const [i, r] of recs.entries()) {
        // its host paths in the share (a restored pod binds its own where these were)
        const shareMounts = (await this.containers.hostPathBinds(r.config, podUid)).map((b) => b.containerPath);
        let log: string | null = null;
        if (r.logPath && (await fsp.copyFile(r.logPath, path.join(dir, 'logs', `${i}.log`)).then(() => true, () => false))) {
          log = `logs/${i}.log`;
          files.push(log);
        }
        containers.push({
          podId: sb.rec.guestIds?.[r.id] ?? r.id, id: r.id, config: r.config, imageId: r.imageId, imageSpec: r.imageSpec, imageRef: r.imageRef,
          createdAt: r.createdAt, startedAt: r.startedAt, finishedAt: r.finishedAt, state: r.state, exitCode: r.exitCode, reason: r.reason,
          message: r.message, pid: r.pid, stopSignal: r.stopSignal, streams: r.streams, imageVolumes: r.imageVolumes ?? [], deviceRules: r.deviceRules ?? [],
          user: r.user, log, shareDir: r.shareDir, shareMounts,
        });
      }
      const cp = await writeCheckpoint(dir, {
        format: 'podvisor.dev/pod-checkpoint',
        version: 1,
        createdAt: new Date().toISOString(),
        backend: sb.rec.backend ?? 'vm',
        host: saved.host,
        sandbox: {
          id: sb.rec.id, config: sb.rec.config, runtimeHandler: sb.rec.runtimeHandler, images: sb.rec.images, agentVersion: sb.rec.agentVersion,
          network: sb.rec.network ? { interfaces: sb.rec.network.interfaces.map((f) => ({ addresses: f.addresses })) } : null,
          state: saved.state,
        },
        containers,
      }, files);
      const bytes = Object.values(cp.files).reduce((n, f) => n + f.size, 0);
      this.logger.info({ sandbox: sb.rec.id, dir, containers: containers.length, bytes, ms: Date.now() - t0 }, 'pod checkpointed');
      if (stop) await this.sandboxes.stop(sb.rec.id);
    } catch (err) {
      await fsp.rm(dir, { recursive: true, force: true }).catch(() => undefined);
      throw err;
    }
  }

  /**
   * A new pod from the checkpoint at `checkpointPath` (a directory, or a CheckpointContainer
   * archive): `config` (default: the checkpointed pod's), its containers with `containerConfigs`
   * matched by name (default: as checkpointed). No options are known.
   */
  async restorePod(checkpointPath: string | undefined, config: PodSandboxConfig | null | undefined, handler: string | undefined, options: Record<string, string> = {}, containerConfigs: ContainerConfig[] = []): Promise<RestoredPod> {
    for (const k of Object.keys(options)) throw invalidArgument(`restore option ${JSON.stringify(k)} is not known (none are)`);
    if (!checkpointPath || !path.isAbsolute(checkpointPath)) throw invalidArgument(`checkpoint path ${JSON.stringify(checkpointPath ?? '')} must be an absolute path`);
    const st = await fsp.stat(checkpointPath).catch(() => undefined);
    if (!st) throw notFound(`checkpoint ${checkpointPath} not found`);
    if (st.isDirectory()) return this.restoreDir(path.resolve(checkpointPath), config, handler, containerConfigs);
    // a CheckpointContainer archive: unpacked beside the daemon's state for the restore
    const tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'pv-restore-'));
    try {
      await run('tar', ['-x', '-f', checkpointPath, '-C', tmp, '--no-same-owner', '--no-same-permissions', 'pod'], 600_000).catch((err: Error) => {
        throw failedPrecondition(`${checkpointPath} is no podvisor checkpoint archive: ${err.message}`);
      });
      return await this.restoreDir(path.join(tmp, 'pod'), config, handler, containerConfigs);
    } finally {
      await fsp.rm(tmp, { recursive: true, force: true });
    }
  }

  private async restoreDir(dir: string, config: PodSandboxConfig | null | undefined, handler: string | undefined, containerConfigs: ContainerConfig[]): Promise<RestoredPod> {
    const t0 = Date.now();
    const cp = await readCheckpoint(dir);
    const podConfig = config?.metadata ? config : cp.sandbox.config;
    // every image the pod had mounted must be here (by id: the mounts are of that content)
    const imageFiles: Record<string, string> = {};
    const wanted = new Set([...Object.keys(cp.sandbox.images), ...cp.containers.flatMap((c) => [c.imageId, ...c.imageVolumes.map((v) => v.imageId)])]);
    for (const id of wanted) {
      const img = this.images.resolve(id);
      if (!img) throw failedPrecondition(`image ${id} of the checkpoint is not on this node: pull it first`);
      imageFiles[img.id] = img.erofsPath;
    }
    const byName = new Map(containerConfigs.map((c) => [c.metadata?.name, c]));
    // each container's host paths (its config's, this pod's) bound where the checkpointed pod
    // had its own: the guest's container mounts point there (the same mounts, in the same order)
    const shareBinds: PodRestoreSource['shareBinds'] = [];
    for (const c of cp.containers) {
      const cfg = byName.get(c.config.metadata?.name) ?? c.config;
      const binds = await this.containers.hostPathBinds(cfg, podConfig.metadata?.uid ?? '');
      const want = c.shareMounts ?? [];
      const have = binds.map((b) => b.containerPath);
      if (have.length !== want.length || have.some((p, i) => p !== want[i])) {
        throw failedPrecondition(`container ${JSON.stringify(c.config.metadata?.name)}: its host-path mounts (${have.join(', ') || 'none'}) are not the checkpointed ones (${want.join(', ') || 'none'}): give the same mounts in the same order`);
      }
      for (const [i, b] of binds.entries()) {
        await fsp.mkdir(b.hostPath, { recursive: true }).catch(() => undefined); // as CreateContainer: a missing host path becomes a directory
        shareBinds.push({ hostPath: b.hostPath, rel: `${shareDirOf(c)}/${i}`, readonly: b.readonly });
      }
    }
    const ids = cp.containers.map(() => crypto.randomBytes(32).toString('hex'));
    const guestIds = Object.fromEntries(cp.containers.map((c, i) => [ids[i], c.podId]));
    const sandboxId = await this.sandboxes.restoreFrom(podConfig, handler ?? cp.sandbox.runtimeHandler, (rec, backend) => {
      if (backend.kind !== cp.backend) throw failedPrecondition(`the checkpoint is of a ${JSON.stringify(cp.backend)} pod; runtime handler ${JSON.stringify(rec.runtimeHandler)} runs ${JSON.stringify(backend.kind)} pods`);
      const here = backend.checkpointHost?.() ?? {};
      for (const k of new Set([...Object.keys(cp.host), ...Object.keys(here)])) {
        if (cp.host[k] !== here[k]) throw failedPrecondition(`the checkpoint needs ${k} ${JSON.stringify(cp.host[k] ?? null)}; this host has ${JSON.stringify(here[k] ?? null)}`);
      }
      rec.images = { ...cp.sandbox.images };
      rec.restoredFrom = dir;
      return { dir, state: cp.sandbox.state, imageFiles, network: cp.sandbox.network, containerIds: guestIds, shareBinds };
    });
    const logDir = podConfig.log_directory;
    const recs: ContainerRecord[] = [];
    for (const [i, c] of cp.containers.entries()) {
      const cfg = byName.get(c.config.metadata?.name) ?? c.config;
      let logPath = '';
      try {
        logPath = resolveLogPath(logDir, cfg.log_path);
      } catch (err) {
        this.logger.warn({ sandbox: sandboxId, container: ids[i], err }, 'restored container gets no log');
      }
      if (logPath && c.log) {
        await fsp.mkdir(path.dirname(logPath), { recursive: true });
        await fsp.copyFile(path.join(dir, c.log), logPath, 1 /* COPYFILE_EXCL: never over a log that is there */).catch(() => undefined);
      }
      recs.push({
        id: ids[i], sandboxId, config: cfg, imageId: c.imageId, imageSpec: c.imageSpec, imageRef: c.imageRef, createdAt: c.createdAt,
        startedAt: c.startedAt, finishedAt: c.finishedAt, state: c.state, exitCode: c.exitCode, reason: c.reason, message: c.message,
        logPath, pid: c.pid, stopSignal: c.stopSignal, streams: c.streams, shareDir: shareDirOf(c), volumes: [],
        imageVolumes: c.imageVolumes, deviceRules: c.deviceRules, user: c.user,
      });
    }
    await this.containers.adoptRestored(sandboxId, recs);
    this.logger.info({ sandbox: sandboxId, from: dir, containers: recs.length, ms: Date.now() - t0 }, 'pod restored from a checkpoint');
    return { podSandboxId: sandboxId, containers: recs.map((r) => ({ name: r.config.metadata?.name ?? '', id: r.id })) };
  }

  /**
   * kubelet's checkpoint API: a tar archive at `location` holding pod/ (the checkpoint of the
   * container's whole pod, which runs on) and container.json (the container's id, name,
   * config and image). README "Checkpoint and restore" documents the layout.
   */
  async checkpointContainer(id: string, location: string | undefined): Promise<void> {
    const c = this.containers.get(id);
    if (!location || !path.isAbsolute(location)) throw invalidArgument(`location ${JSON.stringify(location ?? '')} must be an absolute path`);
    if (await fsp.stat(location).then(() => true, () => false)) throw failedPrecondition(`location ${location} exists`);
    const tmp = await fsp.mkdtemp(path.join(path.dirname(location), '.pv-checkpoint-'));
    try {
      await this.checkpointPod(c.rec.sandboxId, path.join(tmp, 'pod'));
      const info = { format: 'podvisor.dev/container-checkpoint', version: 1, id: c.rec.id, name: c.rec.config.metadata?.name, sandboxId: c.rec.sandboxId, config: c.rec.config, imageRef: c.rec.imageRef, restore: 'RestorePod with this archive as checkpoint_path' };
      await fsp.writeFile(path.join(tmp, CONTAINER_FILE), JSON.stringify(info, null, 2), { mode: 0o600 });
      await run('tar', ['-c', '-f', `${location}.part`, '-C', tmp, CONTAINER_FILE, 'pod'], 600_000);
      await fsp.rename(`${location}.part`, location);
    } catch (err) {
      await fsp.rm(`${location}.part`, { force: true });
      throw err;
    } finally {
      await fsp.rm(tmp, { recursive: true, force: true });
    }
  }
}

/** where a checkpointed container's host paths are in its pod's share (the restored one's too) */
function shareDirOf(c: CheckpointedContainer): string {
  return c.shareDir ?? `c/${c.podId}`;
}

function boolOption(options: Record<string, string>, key: string): boolean {
  const v = options[key];
  if (v === undefined || v === '' || v === 'false') return false;
  if (v === 'true') return true;
  throw invalidArgument(`checkpoint option ${key} must be "true" or "false", not ${JSON.stringify(v)}`);
}
