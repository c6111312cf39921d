// librbd through koffi: image create / resize / info / list / remove, the operations the CSI
// controller and `podvisor volume` need. Attaching images to VMs is QEMU's job (drivers/rbd.ts);
// nothing here maps or mounts an image on the host.
import { invalid, radosError, StorageError } from '../errors';
import { callAsync, loadRados, RadosCluster, RadosOptions, withCluster } from './rados';

type KoffiFn = ((...args: any[]) => any) & { async: (...args: any[]) => void };

interface RbdLib {
  infoSize: number;
  rbd_create2: KoffiFn;
  rbd_open: KoffiFn;
  rbd_close: KoffiFn;
  rbd_resize: KoffiFn;
  rbd_stat: KoffiFn;
  rbd_get_features: KoffiFn;
  rbd_remove: KoffiFn;
  rbd_list: KoffiFn;
}

let lib: RbdLib | undefined;

function loadRbd(): RbdLib {
  if (lib) return lib;
  const { koffi } = loadRados();
  let so: any;
  try {
    so = koffi.load('librbd.so.1');
  } catch (err) {
    throw new StorageError('unavailable', `librbd is not available (install librbd1): ${(err as Error).message}`);
  }
  const { ioctx } = loadRados().types;
  const image = koffi.pointer(koffi.opaque());
  const info = koffi.struct({
    size: 'uint64_t',
    obj_size: 'uint64_t',
    num_objs: 'uint64_t',
    order: 'int',
    block_name_prefix: koffi.array('char', 24, 'String'),
    parent_pool: 'int64_t',
    parent_name: koffi.array('char', 96, 'String'),
  });
  const f = (name: string, ret: string, args: unknown[]) => so.func(name, ret, args);
  lib = {
    infoSize: koffi.sizeof(info),
    rbd_create2: f('rbd_create2', 'int', [ioctx, 'str', 'uint64_t', 'uint64_t', koffi.inout(koffi.pointer('int'))]),
    rbd_open: f('rbd_open', 'int', [ioctx, 'str', koffi.out(koffi.pointer(image)), 'str']),
    rbd_close: f('rbd_close', 'int', [image]),
    rbd_resize: f('rbd_resize', 'int', [image, 'uint64_t']),
    rbd_stat: f('rbd_stat', 'int', [image, koffi.out(koffi.pointer(info)), 'size_t']),
    rbd_get_features: f('rbd_get_features', 'int', [image, koffi.out(koffi.pointer('uint64_t'))]),
    rbd_remove: f('rbd_remove', 'int', [ioctx, 'str']),
    rbd_list: f('rbd_list', 'int', [ioctx, koffi.out(koffi.pointer('uint8_t')), koffi.inout(koffi.pointer('size_t'))]),
  };
  return lib;
}

/** layering, exclusive-lock, object-map, fast-diff, deep-flatten: librbd's default set */
export const DEFAULT_FEATURES = 1n | 4n | 8n | 16n | 32n;
const IMAGE_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$/;

export interface ImageRef {
  pool: string;
  namespace?: string;
  image: string;
}

export interface ImageInfo {
  name: string;
  size: number;
  objectSize: number;
  order: number;
  features: bigint;
}

function checkName(name: string): void {
  if (!IMAGE_NAME.test(name)) throw invalid(`invalid RBD image name ${JSON.stringify(name)}`);
}

function bytes(size: number | bigint, what: string): bigint {
  const b = BigInt(size);
  if (b <= 0n) throw invalid(`${what} must be positive`);
  return b;
}

const where = (r: ImageRef) => `${r.pool}/${r.namespace ? r.namespace + '/' : ''}${r.image}`;

export class Rbd {
  private readonly l = loadRbd();
  constructor(readonly cluster: RadosCluster) {}

  async create(ref: ImageRef, sizeBytes: number | bigint, features: bigint = DEFAULT_FEATURES): Promise<void> {
    checkName(ref.image);
    const size = bytes(sizeBytes, 'image size');
    await this.cluster.withIoctx(ref.pool, ref.namespace, async (io) => {
      const r = await callAsync(this.l.rbd_create2, io, ref.image, size, features, [0]);
      if (r < 0) throw radosError(`creating RBD image ${where(ref)}`, r);
    });
  }

  private async withImage<T>(ref: ImageRef, fn: (img: unknown) => Promise<T>): Promise<T> {
    checkName(ref.image);
    return this.cluster.withIoctx(ref.pool, ref.namespace, async (io) => {
      const out: unknown[] = [null];
      const r = await callAsync(this.l.rbd_open, io, ref.image, out, null);
      if (r < 0) throw radosError(`opening RBD image ${where(ref)}`, r);
      try {
        return await fn(out[0]);
      } finally {
        await callAsync(this.l.rbd_close, out[0]).catch(() => undefined);
      }
    });
  }

  async info(ref: ImageRef): Promise<ImageInfo> {
    return this.withImage(ref, async (img) => {
      const st: Record<string, any> = {};
      const r = await callAsync(this.l.rbd_stat, img, st, this.l.infoSize);
      if (r < 0) throw radosError(`stat of RBD image ${where(ref)}`, r);
      const f: bigint[] = [0n];
      const r2 = await callAsync(this.l.rbd_get_features, img, f);
      if (r2 < 0) throw radosError(`features of RBD image ${where(ref)}`, r2);
      return { name: ref.image, size: Number(st.size), objectSize: Number(st.obj_size), order: Number(st.order), features: BigInt(f[0]) };
    });
  }

  /** Grows (or shrinks, with allowShrink) the image to exactly sizeBytes. */
  async resize(ref: ImageRef, sizeBytes: number | bigint, allowShrink = false): Promise<void> {
    const size = bytes(sizeBytes, 'image size');
    await this.withImage(ref, async (img) => {
      if (!allowShrink) {
        const st: Record<string, any> = {};
        const r0 = await callAsync(this.l.rbd_stat, img, st, this.l.infoSize);
        if (r0 < 0) throw radosError(`stat of RBD image ${where(ref)}`, r0);
        if (BigInt(st.size) > size) throw invalid(`RBD image ${where(ref)} is ${st.size} bytes; refusing to shrink it to ${size}`);
      }
      const r = await callAsync(this.l.rbd_resize, img, size);
      if (r < 0) throw radosError(`resizing RBD image ${where(ref)}`, r);
    });
  }

  async remove(ref: ImageRef): Promise<void> {
    checkName(ref.image);
    await this.cluster.withIoctx(ref.pool, ref.namespace, async (io) => {
      const r = await callAsync(this.l.rbd_remove, io, ref.image);
      if (r < 0) throw radosError(`removing RBD image ${where(ref)}`, r);
    });
  }

  async list(pool: string, namespace?: string): Promise<string[]> {
    return this.cluster.withIoctx(pool, namespace, async (io) => {
      for (let cap = 4096; cap <= 64 << 20; cap *= 4) {
        const buf = Buffer.alloc(cap);
        const size = [cap];
        const r = await callAsync(this.l.rbd_list, io, buf, size);
        if (r === -34 /* ERANGE */) continue;
        if (r < 0) throw radosError(`listing RBD images in ${pool}`, r);
        return buf.subarray(0, r).toString('utf8').split('\0').filter(Boolean);
      }
      throw radosError(`listing RBD images in ${pool}`, -34);
    });
  }
}

/** Connects with `o`, runs fn with an Rbd client, shuts down. */
export function withRbd<T>(o: RadosOptions, fn: (rbd: Rbd) => Promise<T>): Promise<T> {
  return withCluster(o, (c) => fn(new Rbd(c)));
}
