// The one SCSI hot-plug of the QEMU driver: a block source (util/block-source.ts) becomes a
// block node (and, for RBD, a secret object holding its key) plugged as a scsi-hd on the VM's
// one virtio-scsi controller; unplugging undoes it in reverse. Image disks and volumes both go
// through here, sharing the target ids 1..255. Every removal tolerates "already gone", so a
// detach, a rollback or a sweep can be re-run after a crash. microvm has no PCI hot-plug: the
// controller exists from boot and takes disks at run time (shared/machine-facts.md).
import { BlockAttachError, BlockAttachment, BlockSource } from '../util/block-source';

/** The QMP client as the bus uses it (QmpClient; a bare QEMU in the storage tests). */
export interface QmpLike {
  execute(command: string, args?: object): Promise<any>;
  waitEvent(name: string, timeoutMs: number, match?: (data: any) => boolean): Promise<any>;
}

/** QEMU's names for one attachment: the device, its format and protocol nodes, an RBD key's secret. */
export interface BlockNames {
  device: string;
  format: string;
  file: string;
  secret: string;
}

/** Volumes' names all start with "pvvol-" so that leftovers can be found and swept. */
export function volumeNames(tag: string): BlockNames {
  return { file: `pvvol-${tag}-f`, format: `pvvol-${tag}`, secret: `pvvol-${tag}-s`, device: `pvvol-${tag}-d` };
}

/** An image disk's names (the format node's name is what the sandbox record keeps). */
export function diskNames(nodeName: string): BlockNames {
  return { format: nodeName, file: `${nodeName}-f`, device: `dev-${nodeName}`, secret: `${nodeName}-s` };
}

export const DEVICE_DELETE_TIMEOUT_MS = 10_000;

function isGone(err: unknown): boolean {
  const m = String((err as Error)?.message ?? err);
  return /not found|No such|DeviceNotFound|Cannot find|does not exist|not exist/i.test(m) || (err as { errorClass?: string })?.errorClass === 'DeviceNotFound';
}

let aioMode: 'io_uring' | 'native' | undefined;

export class ScsiBus {
  private next = 1;
  private readonly used: Set<number>;

  constructor(private readonly qmp: QmpLike, inUse: Iterable<number> = []) {
    this.used = new Set(inUse);
  }

  /** A free target id (1..255). */
  alloc(): number {
    if (this.used.size >= 255) throw new BlockAttachError('resource_exhausted', 'plug', false, 'no free SCSI target on this VM');
    let id = this.next;
    while (this.used.has(id)) id = (id % 255) + 1;
    this.next = (id % 255) + 1;
    this.used.add(id);
    return id;
  }

  release(id: number): void {
    this.used.delete(id);
  }

  /** Marks ids held by attachments made before a daemon restart. */
  reserve(ids: Iterable<number>): void {
    for (const id of ids) this.used.add(id);
  }

  get inUse(): number[] {
    return [...this.used];
  }

  /**
   * Opens `source` and plugs it at a free target (or `scsiId`, already allocated). On failure
   * what was made is removed and the id freed; the error is a BlockAttachError.
   */
  async plug(names: BlockNames, source: BlockSource, readonly: boolean, scsiId = this.alloc()): Promise<BlockAttachment> {
    const made: Partial<BlockNames> = {};
    try {
      await this.open(names, source, readonly, made);
      await this.qmp.execute('blockdev-add', { driver: 'raw', 'node-name': names.format, file: names.file, 'read-only': readonly });
      made.format = names.format;
      try {
        await this.qmp.execute('device_add', { driver: 'scsi-hd', id: names.device, bus: 'scsi0.0', 'scsi-id': scsiId, lun: 0, drive: names.format });
      } catch (err) {
        // QEMU's image locking: another VM has it open for writing, or any access while we want to write
        const inUse = /Failed to get .*lock/.test(String((err as Error)?.message));
        throw new BlockAttachError(inUse ? 'failed_precondition' : 'internal', 'plug', inUse, (err as Error)?.message ?? String(err));
      }
      return { scsiId, lun: 0, objects: { device: names.device, nodes: [names.file, names.format], ...(made.secret ? { secret: made.secret } : {}) } };
    } catch (err) {
      await this.remove(made).catch(() => undefined);
      this.release(scsiId);
      throw err;
    }
  }

  private async open(names: BlockNames, source: BlockSource, readonly: boolean, made: Partial<BlockNames>): Promise<void> {
    const refuse = (code: 'unavailable' | 'failed_precondition', err: unknown) =>
      new BlockAttachError(code, 'open', /Failed to get .*lock/.test(String((err as Error)?.message)), (err as Error)?.message ?? String(err));
    switch (source.kind) {
      case 'file':
        await this.qmp.execute('blockdev-add', { driver: 'file', 'node-name': names.file, filename: source.path, 'read-only': readonly })
          .catch((e) => { throw refuse('failed_precondition', e); });
        break;
      case 'host_device': {
        const args = (aio: string) => ({
          driver: 'host_device', 'node-name': names.file, filename: source.path, 'read-only': readonly,
          cache: { direct: true, 'no-flush': false }, aio,
        });
        let opened = false;
        if (aioMode !== 'native') {
          try {
            await this.qmp.execute('blockdev-add', args('io_uring'));
            aioMode = 'io_uring';
            opened = true;
          } catch (err) {
            // QEMU built without io_uring (or the kernel refuses it): fall back to native AIO
            if (!/io_uring|aio/i.test(String((err as Error).message))) throw refuse('failed_precondition', err);
            aioMode = 'native';
          }
        }
        if (!opened) await this.qmp.execute('blockdev-add', args('native')).catch((e) => { throw refuse('failed_precondition', e); });
        break;
      }
      case 'rbd': {
        await this.qmp.execute('object-add', { 'qom-type': 'secret', id: names.secret, data: source.key, format: 'base64' });
        made.secret = names.secret;
        const node: Record<string, unknown> = {
          driver: 'rbd', 'node-name': names.file, pool: source.pool, image: source.image, user: source.user,
          'key-secret': names.secret, 'auth-client-required': ['cephx'], conf: source.confFile,
          server: source.monitors.map((m) => ({ host: m.host, port: String(m.port) })),
          'read-only': readonly,
        };
        if (source.namespace) node.namespace = source.namespace;
        await this.qmp.execute('blockdev-add', node).catch((e) => { throw refuse('unavailable', e); });
        break;
      }
    }
    made.file = names.file;
  }

  /** Unplugs the device (waiting for the guest to let go) and removes its nodes and secret. */
  async unplug(names: BlockNames, scsiId?: number): Promise<void> {
    await this.remove(names);
    if (scsiId !== undefined) this.release(scsiId);
  }

  private async remove(n: Partial<BlockNames>): Promise<void> {
    if (n.device) await this.deviceDel(n.device);
    if (n.format) await this.quietly('blockdev-del', { 'node-name': n.format });
    if (n.file) await this.quietly('blockdev-del', { 'node-name': n.file });
    if (n.secret) await this.quietly('object-del', { id: n.secret });
  }

  /** Removes every device, node and secret whose name starts with `prefix` (what a crash left). */
  async sweep(prefix: string): Promise<void> {
    const devices: Array<{ name: string; type: string }> = await this.qmp.execute('qom-list', { path: '/machine/peripheral' }).catch(() => []);
    for (const d of devices) if (d.name.startsWith(prefix) && d.type.startsWith('child<')) await this.deviceDel(d.name);
    const nodes: Array<{ 'node-name': string }> = await this.qmp.execute('query-named-block-nodes', { flat: true });
    const ours = nodes.map((x) => x['node-name']).filter((x) => x.startsWith(prefix));
    // formats first (no -f suffix), then protocol nodes
    for (const x of [...ours.filter((y) => !y.endsWith('-f')), ...ours.filter((y) => y.endsWith('-f'))]) await this.quietly('blockdev-del', { 'node-name': x });
    const objects: Array<{ name: string }> = await this.qmp.execute('qom-list', { path: '/objects' }).catch(() => []);
    for (const o of objects) if (o.name.startsWith(prefix)) await this.quietly('object-del', { id: o.name });
  }

  private async deviceDel(id: string): Promise<void> {
    const gone = this.qmp.waitEvent('DEVICE_DELETED', DEVICE_DELETE_TIMEOUT_MS, (d) => d?.device === id);
    gone.catch(() => undefined);
    try {
      await this.qmp.execute('device_del', { id });
    } catch (err) {
      if (isGone(err)) return;
      throw err;
    }
    await gone;
  }

  private async quietly(command: string, args: object): Promise<void> {
    try {
      await this.qmp.execute(command, args);
    } catch (err) {
      if (!isGone(err)) throw err;
    }
  }
}
