// podvisor-csi: a CSI v1 plugin whose Node service never mounts anything. NodePublishVolume
// writes a sealed volume descriptor (descriptor.ts) into the target path; when kubelet then
// hands that path to podvisor as a CRI mount, the volume is attached to the pod's VM and
// mounted in the guest. No NodeStage (STAGE_UNSTAGE_VOLUME is not advertised): there is
// nothing to stage on the host. The Controller service creates, deletes and grows RBD images
// through librbd (koffi). Served on a unix socket with @grpc/grpc-js from storage/csi/csi.proto.
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { withRbd } from '../ceph/rbd';
import type { RadosOptions } from '../ceph/rados';
import { DESCRIPTOR_FILE, loadSealKey, NFS_VERSIONS, parseMonitor, readDescriptor, removeDescriptor, writeDescriptor } from '../descriptor';
import { invalid, notFound, StorageError, toGrpcError } from '../errors';

export const DRIVER_NAME = 'csi.podvisor.dev';
export const VERSION = '0.1.0';
const DEFAULT_SIZE = 1 << 30;

function findProto(): string {
  for (let dir = __dirname; ; dir = path.dirname(dir)) {
    for (const c of [path.join(dir, 'csi.proto'), path.join(dir, 'storage', 'csi', 'csi.proto')]) if (fs.existsSync(c)) return c;
    if (path.dirname(dir) === dir) throw new Error(`storage/csi/csi.proto not found above ${__dirname}`);
  }
}

export function loadCsi(): any {
  const def = protoLoader.loadSync(findProto(), { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true });
  return (grpc.loadPackageDefinition(def) as any).csi.v1;
}

export interface CsiOptions {
  /** unix:///path/to/csi.sock (or a bare path) */
  endpoint: string;
  nodeId: string;
  /** serve the Controller service (CreateVolume / DeleteVolume / ControllerExpandVolume) */
  controller?: boolean;
  /** serve the Node service */
  node?: boolean;
  /** where the node plugin keeps root-only key files for published RBD volumes */
  secretsDir: string;
  /** descriptor seal key file (shared with the podvisor daemon); null: write unsealed */
  sealKeyFile: string | null;
  /** default Ceph monitors when neither parameters nor secrets name them */
  monitors?: string[];
  cephTimeoutSec?: number;
  driverName?: string;
  logger?: { info(o: object, m: string): void; warn(o: object, m: string): void };
}

type Handler = (req: any) => Promise<any>;

/** rbd volume ids: "rbd:<pool>/<namespace>/<image>" (monitors come from parameters/secrets/flags) */
export function rbdVolumeId(pool: string, namespace: string, image: string): string {
  return `rbd:${pool}/${namespace}/${image}`;
}
export function parseRbdVolumeId(id: string): { pool: string; namespace?: string; image: string } {
  const m = /^rbd:([A-Za-z0-9_][A-Za-z0-9_.-]*)\/([A-Za-z0-9_.-]*)\/([A-Za-z0-9_][A-Za-z0-9_.-]*)$/.exec(id);
  if (!m) throw notFound(`volume id ${JSON.stringify(id)} is not a podvisor RBD volume id`);
  return { pool: m[1], namespace: m[2] || undefined, image: m[3] };
}

/** CreateVolume name → RBD image name (CO names are "pvc-<uuid>"; anything else is hashed). */
export function imageName(name: string): string {
  if (/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,200}$/.test(name)) return name;
  return `csi-vol-${crypto.createHash('sha256').update(name).digest('hex').slice(0, 32)}`;
}

function requestedBytes(range: any): number {
  const req = Number(range?.required_bytes ?? 0);
  const lim = Number(range?.limit_bytes ?? 0);
  if (req < 0 || lim < 0) throw invalid('capacity_range must not be negative');
  let size = req || (lim ? Math.min(lim, DEFAULT_SIZE) : DEFAULT_SIZE);
  size = Math.ceil(size / (4 << 20)) * (4 << 20); // whole RBD objects
  if (lim && size > lim) {
    if (req > lim) throw invalid('capacity_range.required_bytes exceeds limit_bytes');
    size = lim;
  }
  return size;
}

export class CsiPlugin {
  readonly server = new grpc.Server();
  private sealKey: Buffer | undefined;
  private socketPath = '';

  constructor(private readonly o: CsiOptions) {}

  async start(): Promise<string> {
    this.sealKey = this.o.sealKeyFile === null ? undefined : await loadSealKey(this.o.sealKeyFile);
    await fsp.mkdir(this.o.secretsDir, { recursive: true, mode: 0o700 });
    await fsp.chmod(this.o.secretsDir, 0o700);
    const csi = loadCsi();
    this.server.addService(csi.Identity.service, this.wrap({
      GetPluginInfo: async () => ({ name: this.o.driverName ?? DRIVER_NAME, vendor_version: VERSION, manifest: {} }),
      GetPluginCapabilities: async () => ({
        capabilities: [
          ...(this.o.controller ? [{ service: { type: 'CONTROLLER_SERVICE' } }] : []),
          // the guest would have to grow the filesystem of a mounted disk; not yet
          { volume_expansion: { type: 'OFFLINE' } },
        ],
      }),
      Probe: async () => ({ ready: { value: true } }),
    }));
    if (this.o.controller) {
      this.server.addService(csi.Controller.service, this.wrap({
        CreateVolume: (r) => this.createVolume(r),
        DeleteVolume: (r) => this.deleteVolume(r),
        ValidateVolumeCapabilities: (r) => this.validateCaps(r),
        ControllerGetCapabilities: async () => ({ capabilities: ['CREATE_DELETE_VOLUME', 'EXPAND_VOLUME'].map((type) => ({ rpc: { type } })) }),
        ControllerExpandVolume: (r) => this.expandVolume(r),
      }));
    }
    if (this.o.node) {
      this.server.addService(csi.Node.service, this.wrap({
        NodePublishVolume: (r) => this.nodePublish(r),
        NodeUnpublishVolume: (r) => this.nodeUnpublish(r),
        // no STAGE_UNSTAGE_VOLUME: NodePublish only writes a descriptor, there is nothing to stage
        NodeGetCapabilities: async () => ({ capabilities: [] }),
        NodeGetInfo: async () => ({ node_id: this.o.nodeId, max_volumes_per_node: 200 }),
      }));
    }
    this.socketPath = this.o.endpoint.replace(/^unix:\/\//, '');
    if (!this.socketPath.startsWith('/')) throw invalid(`endpoint must be unix:///absolute/path, not ${this.o.endpoint}`);
    await fsp.mkdir(path.dirname(this.socketPath), { recursive: true });
    await fsp.rm(this.socketPath, { force: true });
    await new Promise<void>((resolve, reject) =>
      this.server.bindAsync(`unix://${this.socketPath}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())));
    this.o.logger?.info({ endpoint: this.o.endpoint, controller: !!this.o.controller, node: !!this.o.node }, 'CSI plugin serving');
    return this.socketPath;
  }

  async stop(): Promise<void> {
    await new Promise<void>((resolve) => this.server.tryShutdown(() => resolve()));
    if (this.socketPath) await fsp.rm(this.socketPath, { force: true });
  }

  private wrap(handlers: Record<string, Handler>): grpc.UntypedServiceImplementation {
    const impl: grpc.UntypedServiceImplementation = {};
    for (const [name, fn] of Object.entries(handlers)) {
      impl[name] = (call: grpc.ServerUnaryCall<any, any>, cb: grpc.sendUnaryData<any>) => {
        fn(call.request).then((res) => cb(null, res), (err) => {
          if (!(err instanceof StorageError)) this.o.logger?.warn({ rpc: name, err }, 'CSI call failed');
          cb(toGrpcError(err) as grpc.ServiceError);
        });
      };
    }
    return impl;
  }

  // ---- controller ----

  private cephOptions(params: Record<string, string>, secrets: Record<string, string>): RadosOptions {
    const monStr = params.monitors || secrets.monitors || (this.o.monitors ?? []).join(',');
    const monitors = monStr.split(',').map((s) => s.trim()).filter(Boolean);
    if (!monitors.length) throw invalid('no Ceph monitors: set the "monitors" parameter / secret or --ceph-monitors');
    monitors.forEach((m, i) => parseMonitor(m, `monitors[${i}]`));
    const user = (secrets.adminID || secrets.userID || '').replace(/^client\./, '');
    const key = secrets.adminKey || secrets.userKey;
    if (!user || !key) throw invalid('Ceph credentials missing: the secret must hold userID and userKey (or adminID/adminKey)');
    return { monitors, user, key, timeoutSec: this.o.cephTimeoutSec ?? 10 };
  }

  private async createVolume(req: any): Promise<any> {
    if (!req.name) throw invalid('name is required');
    if (!req.volume_capabilities?.length) throw invalid('volume_capabilities are required');
    this.checkCaps(req.volume_capabilities);
    if (req.volume_content_source) throw new StorageError('invalid_argument', 'volume content sources (snapshots, clones) are not supported');
    const params: Record<string, string> = req.parameters ?? {};
    const kind = params.kind ?? 'rbd';
    if (kind !== 'rbd') throw invalid(`CreateVolume provisions RBD images only (kind=${kind}); NFS and block volumes are static PersistentVolumes`);
    const pool = params.pool;
    if (!pool) throw invalid('parameter "pool" is required');
    const namespace = params.namespace ?? '';
    const ceph = this.cephOptions(params, req.secrets ?? {});
    const size = requestedBytes(req.capacity_range);
    const image = imageName(req.name);
    const ref = { pool, namespace: namespace || undefined, image };
    const have = await withRbd(ceph, async (rbd) => {
      try {
        await rbd.create(ref, size);
        return size;
      } catch (err) {
        if ((err as StorageError).code !== 'already_exists') throw err;
        // idempotent retry of the same request: fine if the existing image fits
        const info = await rbd.info(ref);
        const lim = Number(req.capacity_range?.limit_bytes ?? 0);
        if (info.size < Number(req.capacity_range?.required_bytes ?? 0) || (lim && info.size > lim)) {
          throw new StorageError('already_exists', `RBD image ${pool}/${image} exists with an incompatible size ${info.size}`);
        }
        return info.size;
      }
    });
    const context: Record<string, string> = { kind: 'rbd', monitors: ceph.monitors.join(','), pool, image };
    if (namespace) context.namespace = namespace;
    if (params.fsType) context.fsType = params.fsType;
    this.o.logger?.info({ volume: req.name, image: `${pool}/${image}`, size: have }, 'RBD volume created');
    return { volume: { volume_id: rbdVolumeId(pool, namespace, image), capacity_bytes: String(have), volume_context: context } };
  }

  private async deleteVolume(req: any): Promise<any> {
    if (!req.volume_id) throw invalid('volume_id is required');
    let ref;
    try {
      ref = parseRbdVolumeId(req.volume_id);
    } catch {
      return {}; // not ours / malformed: nothing to delete (DeleteVolume is idempotent)
    }
    const ceph = this.cephOptions({}, req.secrets ?? {});
    await withRbd(ceph, async (rbd) => {
      try {
        await rbd.remove(ref);
      } catch (err) {
        if ((err as StorageError).code !== 'not_found') throw err;
      }
    });
    return {};
  }

  private async expandVolume(req: any): Promise<any> {
    if (!req.volume_id) throw invalid('volume_id is required');
    const ref = parseRbdVolumeId(req.volume_id);
    const size = requestedBytes(req.capacity_range);
    const ceph = this.cephOptions({}, req.secrets ?? {});
    const now = await withRbd(ceph, async (rbd) => {
      const info = await rbd.info(ref);
      if (info.size >= size) return info.size;
      await rbd.resize(ref, size);
      return size;
    });
    // the filesystem grows on the next attach (guest-side resize is not done yet)
    return { capacity_bytes: String(now), node_expansion_required: false };
  }

  private checkCaps(caps: any[]): void {
    for (const c of caps) {
      if (c.block) throw invalid('raw block access (volumeMode: Block) is not supported by podvisor-csi');
      const mode = c.access_mode?.mode;
      if (mode === 'MULTI_NODE_MULTI_WRITER' || mode === 'MULTI_NODE_SINGLE_WRITER') {
        throw invalid(`access mode ${mode} is not supported for RBD filesystems`);
      }
    }
  }

  private async validateCaps(req: any): Promise<any> {
    if (!req.volume_id) throw invalid('volume_id is required');
    if (!req.volume_capabilities?.length) throw invalid('volume_capabilities are required');
    parseRbdVolumeId(req.volume_id);
    try {
      this.checkCaps(req.volume_capabilities);
    } catch (err) {
      return { message: (err as Error).message };
    }
    return { confirmed: { volume_context: req.volume_context ?? {}, volume_capabilities: req.volume_capabilities, parameters: req.parameters ?? {} } };
  }

  // ---- node ----

  private keyFileFor(targetPath: string): string {
    return path.join(this.o.secretsDir, `${crypto.createHash('sha256').update(path.resolve(targetPath)).digest('hex').slice(0, 32)}.key`);
  }

  private async nodePublish(req: any): Promise<any> {
    if (!req.volume_id) throw invalid('volume_id is required');
    if (!req.target_path) throw invalid('target_path is required');
    const cap = req.volume_capability;
    if (!cap) throw invalid('volume_capability is required');
    if (cap.block) throw invalid('raw block access (volumeMode: Block) is not supported by podvisor-csi');
    const ctx: Record<string, string> = req.volume_context ?? {};
    const target = path.resolve(req.target_path);
    const readOnly = !!req.readonly || ['SINGLE_NODE_READER_ONLY', 'MULTI_NODE_READER_ONLY'].includes(cap.access_mode?.mode);
    const mountOptions: string[] = cap.mount?.mount_flags ?? [];
    const fsType = cap.mount?.fs_type || ctx.fsType || undefined;
    const kind = ctx.kind ?? (String(req.volume_id).startsWith('rbd:') ? 'rbd' : '');
    let desc: Record<string, unknown>;
    const common = { version: 1, readOnly, mountOptions, metadata: { volumeId: String(req.volume_id).slice(0, 1024) } };
    let keyFile: string | undefined;
    if (kind === 'rbd') {
      const ref = parseRbdVolumeId(req.volume_id);
      const secrets: Record<string, string> = req.secrets ?? {};
      const user = (secrets.userID || ctx.user || '').replace(/^client\./, '');
      if (!user) throw invalid('RBD NodePublish needs the user: a node-publish secret with userID/userKey, or volume_context user + keyFile');
      let secret: Record<string, string>;
      if (secrets.userKey) {
        keyFile = this.keyFileFor(target);
        await fsp.writeFile(keyFile, secrets.userKey.trim() + '\n', { mode: 0o600 });
        secret = { keyFile };
      } else if (ctx.keyFile) {
        secret = { keyFile: ctx.keyFile };
      } else {
        throw invalid('RBD NodePublish needs a node-publish secret (userID, userKey) or volume_context keyFile');
      }
      const monitors = (ctx.monitors || secrets.monitors || (this.o.monitors ?? []).join(',')).split(',').map((s) => s.trim()).filter(Boolean);
      desc = {
        ...common, kind: 'rbd', fsType: fsType ?? 'ext4', format: ctx.format !== 'false' && !readOnly,
        rbd: { monitors, pool: ref.pool, ...(ref.namespace ? { namespace: ref.namespace } : {}), image: ref.image, user, secret },
      };
    } else if (kind === 'nfs') {
      const version = ctx.version ?? '4.1';
      if (!(NFS_VERSIONS as readonly string[]).includes(version)) throw invalid(`volume_context version must be one of ${NFS_VERSIONS.join(', ')}`);
      desc = { ...common, kind: 'nfs', nfs: { server: ctx.server, export: ctx.share ?? ctx.export, version } };
    } else if (kind === 'block') {
      desc = { ...common, kind: 'block', fsType: fsType ?? 'ext4', format: ctx.format === 'true' && !readOnly, block: { device: ctx.device } };
    } else {
      throw invalid(`volume_context.kind must be rbd, nfs or block (got ${JSON.stringify(ctx.kind)})`);
    }
    try {
      await fsp.mkdir(target, { recursive: true, mode: 0o750 });
      const existing = await readDescriptor(target, { sealKey: this.sealKey }).catch(() => undefined);
      if (existing && existing.metadata.volumeId !== common.metadata.volumeId) {
        throw new StorageError('already_exists', `${target} already holds a descriptor for volume ${existing.metadata.volumeId}`);
      }
      await writeDescriptor(target, desc, this.sealKey);
    } catch (err) {
      if (keyFile) await fsp.rm(keyFile, { force: true });
      throw err;
    }
    this.o.logger?.info({ volume: req.volume_id, target, kind, readOnly }, 'descriptor published');
    return {};
  }

  private async nodeUnpublish(req: any): Promise<any> {
    if (!req.volume_id) throw invalid('volume_id is required');
    if (!req.target_path) throw invalid('target_path is required');
    const target = path.resolve(req.target_path);
    await removeDescriptor(target);
    await fsp.rm(this.keyFileFor(target), { force: true });
    // we created the directory: remove it (only if empty; never recurse into user data)
    await fsp.rmdir(target).catch((err) => {
      if (!['ENOENT', 'ENOTEMPTY', 'EEXIST'].includes(err.code)) throw err;
    });
    return {};
  }
}

export { DESCRIPTOR_FILE };
