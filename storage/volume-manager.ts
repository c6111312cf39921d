// What CreateContainer / StopPodSandbox / RemovePodSandbox call. classify() decides whether a
// CRI mount's host path is a volume to hand to the VM (a directory with a sealed descriptor, or
// a block device) or a plain directory for the 9p share; attach() attaches it to the pod's VM
// once (refcounted per pod + volume) and returns the guest path to bind into the container;
// detachAll() unmounts and unplugs everything of a pod. Attachments are persisted per pod (no
// secrets) so a restarted daemon can still detach them.
import crypto from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import writeFileAtomic from 'write-file-atomic';
import { DESCRIPTOR_FILE, loadSealKey, readDescriptor, VolumeDescriptor } from './descriptor';
import { BlockDriver, checkHostBlockDevice } from './drivers/block';
import { NfsDriver } from './drivers/nfs';
import { RbdDriver, writeRbdClientConf } from './drivers/rbd';
import { precondition, StorageError } from './errors';
import type { AttachHandle, PodVolumeTarget, VolumeDriver } from './volume-driver';

export type { PodVolumeTarget } from './volume-driver';

/** Guest directory under which volumes are mounted: /run/podvisor/volumes/<key>. */
export const GUEST_VOLUMES = '/run/podvisor/volumes';

export interface VolumeSource {
  /** the CRI host path this came from */
  hostPath: string;
  descriptor: VolumeDescriptor;
  /** a host block device handed over as a device (no mount): CRI host_path or devices entry */
  raw: boolean;
  /** stable per-volume key: names the guest mount point and the QMP objects */
  key: string;
}

export interface AttachResult {
  /** where the volume is in the guest: the mount point, or the device node for raw sources */
  guestPath: string;
  key: string;
  /** effective mode of the guest attachment (device + mount) */
  readonly: boolean;
  /**
   * true when the container asked for read-only but shares a read-write attachment with
   * another container: the bind into the container must then carry "ro" (the runtime always
   * adds "ro" for a read-only CRI mount anyway)
   */
  bindReadonly: boolean;
  raw: boolean;
  /** raw sources: the guest device numbers of guestPath (for the container's device rules) */
  guestDevice?: { major: number; minor: number };
}

interface Entry {
  key: string;
  identity: string;
  refs: number;
  handle: AttachHandle;
}

interface PodState {
  version: 1;
  entries: Entry[];
}

export interface VolumeManagerOptions {
  /** host directory for podvisor storage state (pod attachment files, rbd client conf, seal key) */
  stateDir: string;
  /**
   * the seal key file; descriptors must be sealed with it (descriptor.ts). null switches
   * sealing off (tests, hand-written descriptors on single-tenant hosts).
   */
  sealKeyFile?: string | null;
  /** check RBD images from the host before attaching (default true) */
  rbdPreflight?: boolean;
  /** bound for Ceph connections (preflight and QEMU's librbd), s (default 15) */
  cephTimeoutSec?: number;
  logger?: { info(o: object, m: string): void; warn(o: object, m: string): void };
}

export class VolumeManager {
  private readonly drivers: Map<string, VolumeDriver<any>>;
  private readonly locks = new Map<string, Promise<unknown>>();

  private constructor(private readonly o: VolumeManagerOptions, private readonly sealKey: Buffer | undefined, rbdConf: string) {
    this.drivers = new Map<string, VolumeDriver<any>>([
      ['block', new BlockDriver()],
      ['rbd', new RbdDriver({ confFile: rbdConf, preflight: o.rbdPreflight, timeoutSec: o.cephTimeoutSec ?? 15 })],
      ['nfs', new NfsDriver()],
    ]);
  }

  static async create(o: VolumeManagerOptions): Promise<VolumeManager> {
    await fsp.mkdir(path.join(o.stateDir, 'pods'), { recursive: true, mode: 0o700 });
    const sealFile = o.sealKeyFile === undefined ? path.join(o.stateDir, 'volume-seal.key') : o.sealKeyFile;
    const sealKey = sealFile === null ? undefined : await loadSealKey(sealFile);
    const rbdConf = path.join(o.stateDir, 'rbd-client.conf');
    writeRbdClientConf(rbdConf, o.cephTimeoutSec ?? 15);
    return new VolumeManager(o, sealKey, rbdConf);
  }

  /**
   * null: share hostPath over 9p as before. Otherwise the volume to attach. Throws (with a
   * gRPC code) for a descriptor that is malformed, unsealed, or names something unusable, so
   * CreateContainer fails clearly instead of silently sharing the directory.
   */
  async classify(hostPath: string): Promise<VolumeSource | null> {
    let st;
    try {
      st = await fsp.stat(hostPath);
    } catch {
      return null; // missing paths are the runtime's business (9p path reports them)
    }
    if (st.isBlockDevice()) {
      const device = await fsp.realpath(hostPath);
      const descriptor: VolumeDescriptor = { version: 1, kind: 'block', block: { device }, fsType: 'auto', mountOptions: [], readOnly: false, format: false, metadata: {} };
      return { hostPath, descriptor, raw: true, key: this.keyFor(this.identity(descriptor)) };
    }
    if (!st.isDirectory()) return null;
    const descriptor = await readDescriptor(hostPath, { sealKey: this.sealKey });
    if (!descriptor) return null;
    await this.driver(descriptor).validate(descriptor);
    return { hostPath, descriptor, raw: false, key: this.keyFor(this.identity(descriptor)) };
  }

  /**
   * A CRI `devices` entry: the host path must be a block device (it is handed to the VM as a
   * SCSI disk); anything else can never reach a container inside a pod VM, so it is an error.
   */
  async rawDevice(hostPath: string): Promise<VolumeSource> {
    if (!path.isAbsolute(hostPath) || path.normalize(hostPath) !== hostPath) throw new StorageError('invalid_argument', `device host_path ${JSON.stringify(hostPath)} must be an absolute, normalised path`);
    let st;
    try {
      st = await fsp.stat(hostPath);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') throw new StorageError('not_found', `device ${hostPath} does not exist`);
      throw new StorageError('failed_precondition', `device ${hostPath}: ${(err as Error).message}`);
    }
    if (st.isCharacterDevice()) throw new StorageError('failed_precondition', `${hostPath} is a character device: only block devices can be passed into a pod VM`);
    if (!st.isBlockDevice()) throw new StorageError('invalid_argument', `${hostPath} is not a device`);
    const source = await this.classify(hostPath);
    if (!source?.raw) throw new StorageError('invalid_argument', `${hostPath} is not a block device`);
    return source;
  }

  /**
   * Attaches `source` to the pod (once per pod + volume) and returns where the guest has it.
   * `deadline` (ms since the epoch): the caller's; it bounds the guest's mount (AttachOptions).
   */
  attach(pod: PodVolumeTarget, source: VolumeSource, readonly: boolean, o: { deadline?: number } = {}): Promise<AttachResult> {
    return this.locked(pod.id, async () => {
      const state = await this.load(pod.id);
      const d = source.descriptor;
      const identity = this.identity(d);
      const existing = state.entries.find((e) => e.identity === identity);
      if (existing) {
        if (existing.handle.kind !== d.kind) throw precondition(`volume ${source.key} is already attached as ${existing.handle.kind}`);
        if (!!existing.handle.raw !== source.raw) {
          throw precondition(`${source.hostPath}: ${d.kind === 'block' ? `block device ${d.block.device}` : 'this volume'} is already attached to this pod ${existing.handle.raw ? 'as a raw device' : 'with a filesystem mounted'}; it cannot also be used ${source.raw ? 'as a raw device' : 'as a filesystem'}`);
        }
        const res = this.result(existing, readonly, source.raw);
        existing.refs++;
        await this.save(pod.id, state);
        return res;
      }
      if (!pod.alive()) throw new StorageError('failed_precondition', `pod VM ${pod.id} is not running`);
      // The guest attachment (device + mount) is read-only when the volume is (descriptor
      // readOnly, which CSI readonly / a read-only PV lands in). A container's read-only CRI
      // mount of a writable volume is enforced by the ro bind into that container, so other
      // containers of the pod can still share one writable attachment. Raw devices have no
      // bind: their mode is the first request's.
      const ro = d.readOnly || (source.raw ? readonly : false);
      // refuse before touching the VM: result() would refuse it only after the attachment was
      // made and saved, leaving a reference no container holds (attached until the pod stops)
      if (ro && !readonly) throw precondition(`volume ${source.key} is read-only; it can only be mounted read-only`);
      const guestPath = `${GUEST_VOLUMES}/${source.key}`;
      const timeoutMs = o.deadline === undefined ? undefined : Math.max(1, o.deadline - Date.now());
      const handle = await this.driver(d).attach(pod, d, { readonly: ro, guestPath, tag: source.key.slice(-12), raw: source.raw, timeoutMs });
      const entry: Entry = { key: source.key, identity, refs: 1, handle };
      state.entries.push(entry);
      await this.save(pod.id, state);
      this.o.logger?.info({ sandbox: pod.id, volume: source.key, kind: d.kind, guestPath: handle.guestPath, readonly: ro }, 'volume attached');
      return this.result(entry, readonly, source.raw);
    });
  }

  /** Drops one reference; detaches when none is left. */
  release(pod: PodVolumeTarget, key: string): Promise<void> {
    return this.locked(pod.id, async () => {
      const state = await this.load(pod.id);
      const e = state.entries.find((x) => x.key === key);
      if (!e) return;
      if (--e.refs > 0) {
        await this.save(pod.id, state);
        return;
      }
      await this.driver({ kind: e.handle.kind } as VolumeDescriptor).detach(pod, e.handle);
      state.entries = state.entries.filter((x) => x !== e);
      await this.save(pod.id, state);
    });
  }

  /**
   * Unmounts and unplugs every volume of the pod (call before stopping the VM so the guest
   * flushes, and again on removal: then it only forgets). Also sweeps QMP objects named
   * pvvol-* that a crash may have left behind. Errors are collected, not short-circuited.
   */
  detachAll(pod: PodVolumeTarget): Promise<void> {
    return this.locked(pod.id, async () => {
      const state = await this.load(pod.id);
      const errors: string[] = [];
      for (const e of [...state.entries].reverse()) {
        try {
          await this.driver({ kind: e.handle.kind } as VolumeDescriptor).detach(pod, e.handle);
          state.entries = state.entries.filter((x) => x !== e);
        } catch (err) {
          errors.push(`${e.key}: ${(err as Error).message}`);
        }
      }
      if (pod.alive()) await pod.sweepBlocks().catch((err) => errors.push(`sweep: ${(err as Error).message}`));
      else state.entries = [];
      if (state.entries.length) await this.save(pod.id, state);
      else await fsp.rm(this.stateFile(pod.id), { force: true });
      if (errors.length) throw new StorageError('internal', `detaching volumes of pod ${pod.id}: ${errors.join('; ')}`);
    });
  }

  /** The pod's current attachments (for status / debugging). */
  async attachments(podId: string): Promise<Array<{ key: string; refs: number; kind: string; guestPath: string; readonly: boolean }>> {
    const s = await this.load(podId);
    return s.entries.map((e) => ({ key: e.key, refs: e.refs, kind: e.handle.kind, guestPath: e.handle.guestPath, readonly: e.handle.readonly }));
  }

  /** SCSI ids this manager holds on the pod's VM (so the runtime can rebuild its allocator). */
  async scsiIds(podId: string): Promise<number[]> {
    const s = await this.load(podId);
    return s.entries.map((e) => e.handle.scsiId).filter((x): x is number => x !== undefined);
  }

  // ---- internals ----

  private result(e: Entry, readonly: boolean, raw: boolean): AttachResult {
    if (!readonly && e.handle.readonly) {
      throw precondition(`volume ${e.key} is attached read-only to this pod; it cannot also be used read-write`);
    }
    return { guestPath: e.handle.guestPath, key: e.key, readonly: e.handle.readonly, bindReadonly: readonly, raw, guestDevice: e.handle.guestDevice };
  }

  private identity(d: VolumeDescriptor): string {
    return this.driver(d).identity(d);
  }

  private keyFor(identity: string): string {
    const kind = identity.slice(0, identity.indexOf(':'));
    return `${kind}-${crypto.createHash('sha256').update(identity).digest('hex').slice(0, 16)}`;
  }

  private driver(d: Pick<VolumeDescriptor, 'kind'>): VolumeDriver<any> {
    const drv = this.drivers.get(d.kind);
    if (!drv) throw new StorageError('invalid_argument', `unknown volume kind ${d.kind}`);
    return drv;
  }

  private locked<T>(podId: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(podId) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const tail = next.catch(() => undefined);
    this.locks.set(podId, tail);
    tail.then(() => { if (this.locks.get(podId) === tail) this.locks.delete(podId); });
    return next;
  }

  private stateFile(podId: string): string {
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/.test(podId)) throw new StorageError('invalid_argument', `bad pod id ${podId}`);
    return path.join(this.o.stateDir, 'pods', `${podId}.json`);
  }

  private async load(podId: string): Promise<PodState> {
    try {
      const s = JSON.parse(await fsp.readFile(this.stateFile(podId), 'utf8')) as PodState;
      if (s.version === 1 && Array.isArray(s.entries)) return s;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') this.o.logger?.warn({ sandbox: podId, err }, 'unreadable volume state; starting empty');
    }
    return { version: 1, entries: [] };
  }

  private async save(podId: string, s: PodState): Promise<void> {
    await writeFileAtomic(this.stateFile(podId), JSON.stringify(s), { mode: 0o600 });
  }
}

export { DESCRIPTOR_FILE, checkHostBlockDevice };
