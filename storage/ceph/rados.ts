// librados through koffi (FFI). Only what image management needs: a cluster handle configured in
// memory (monitors, cephx user and key, bounded timeouts; no ceph.conf, no keyring file), pool
// I/O contexts, and clean shutdown. Every call that can block on the network goes through
// koffi's `.async` so the event loop stays free; failures become StorageError (errors.ts).
import { promisify } from 'node:util';
import net from 'node:net';
import { Errno, invalid, radosError, StorageError } from '../errors';

// koffi is loaded lazily: a host without librados still runs everything else.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type KoffiFn = ((...args: any[]) => any) & { async: (...args: any[]) => void };

export interface RadosLib {
  koffi: any;
  types: { cluster: unknown; ioctx: unknown };
  rados_create2: KoffiFn;
  rados_conf_set: KoffiFn;
  rados_connect: KoffiFn;
  rados_shutdown: KoffiFn;
  rados_ioctx_create: KoffiFn;
  rados_ioctx_destroy: KoffiFn;
  rados_ioctx_set_namespace: KoffiFn;
  rados_cluster_fsid: KoffiFn;
}

let lib: RadosLib | undefined;
let loadError: Error | undefined;

export function loadRados(): RadosLib {
  if (lib) return lib;
  if (loadError) throw loadError;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const koffi = require('koffi');
    const so = koffi.load('librados.so.2');
    // anonymous types only: koffi's type registry is process-wide (and jest loads this module
    // once per test file in the same process), so named types would collide
    const cluster = koffi.pointer(koffi.opaque());
    const ioctx = koffi.pointer(koffi.opaque());
    const f = (name: string, ret: string, args: unknown[]) => so.func(name, ret, args);
    lib = {
      koffi,
      types: { cluster, ioctx },
      rados_create2: f('rados_create2', 'int', [koffi.out(koffi.pointer(cluster)), 'str', 'str', 'uint64_t']),
      rados_conf_set: f('rados_conf_set', 'int', [cluster, 'str', 'str']),
      rados_connect: f('rados_connect', 'int', [cluster]),
      rados_shutdown: f('rados_shutdown', 'void', [cluster]),
      rados_ioctx_create: f('rados_ioctx_create', 'int', [cluster, 'str', koffi.out(koffi.pointer(ioctx))]),
      rados_ioctx_destroy: f('rados_ioctx_destroy', 'void', [ioctx]),
      rados_ioctx_set_namespace: f('rados_ioctx_set_namespace', 'void', [ioctx, 'str']),
      rados_cluster_fsid: f('rados_cluster_fsid', 'int', [cluster, koffi.out(koffi.pointer('uint8_t')), 'size_t']),
    };
    return lib;
  } catch (err) {
    loadError = new StorageError('unavailable', `librados is not available (install librados2 and koffi): ${(err as Error).message}`);
    throw loadError;
  }
}

/** Calls fn asynchronously on koffi's worker threads. */
export function callAsync<T = number>(fn: KoffiFn, ...args: unknown[]): Promise<T> {
  return promisify((cb: (err: Error | null, res: T) => void) => fn.async(...args, cb))();
}

export interface RadosOptions {
  /** "host:port" strings (msgr v1 addresses, or bare hosts) */
  monitors: string[];
  /** cephx id without "client." */
  user: string;
  /** base64 cephx key; kept in memory only */
  key: string;
  /** bounds for connect and mon commands (client_mount_timeout, rados_mon_op_timeout), s */
  timeoutSec?: number;
  /** bound for OSD ops (rados_osd_op_timeout), s; 0 = none */
  osdTimeoutSec?: number;
}

export class RadosCluster {
  private closed = false;
  private constructor(private readonly l: RadosLib, readonly handle: unknown, readonly user: string) {}

  /** Creates the handle, configures it in memory and connects (bounded by timeoutSec). */
  static async connect(o: RadosOptions): Promise<RadosCluster> {
    if (!o.monitors.length) throw invalid('no Ceph monitors given');
    const l = loadRados();
    const out: unknown[] = [null];
    const rc = l.rados_create2(out, 'ceph', `client.${o.user}`, 0);
    if (rc < 0) throw radosError('rados_create2', rc);
    const h = out[0];
    const timeout = String(o.timeoutSec ?? 10);
    const conf: Array<[string, string]> = [
      ['mon_host', o.monitors.join(',')],
      ['key', o.key],
      ['auth_client_required', 'cephx'],
      ['client_mount_timeout', timeout],
      ['rados_mon_op_timeout', timeout],
      ['rados_osd_op_timeout', String(o.osdTimeoutSec ?? 30)],
      ['log_to_stderr', 'false'],
      ['err_to_stderr', 'false'],
      ['log_file', ''],
      ['admin_socket', ''],
    ];
    try {
      for (const [k, v] of conf) {
        const r = l.rados_conf_set(h, k, v);
        if (r < 0) throw radosError(k === 'key' ? 'setting the cephx key' : `rados_conf_set ${k}=${v}`, r);
      }
      const r = await callAsync(l.rados_connect, h);
      if (r < 0) {
        const what = `connecting to Ceph monitors ${o.monitors.join(',')} as client.${o.user}`;
        // cephx with a wrong key does not get a clean refusal: the client times out just as
        // with unreachable monitors. Tell the two apart by whether a monitor accepts TCP.
        if (-r === Errno.ETIMEDOUT && (await anyReachable(o.monitors))) {
          throw new StorageError('permission_denied', `${what}: the monitors answer but authentication did not complete (wrong key or user?)`, Errno.EACCES);
        }
        if (-r === Errno.EINVAL) throw new StorageError('invalid_argument', `${what}: malformed cephx key or monitor address (EINVAL)`, Errno.EINVAL);
        throw radosError(what, r);
      }
    } catch (err) {
      await callAsync(l.rados_shutdown, h).catch(() => undefined);
      throw err;
    }
    return new RadosCluster(l, h, o.user);
  }

  async fsid(): Promise<string> {
    const buf = Buffer.alloc(64);
    const r = this.l.rados_cluster_fsid(this.handle, buf, buf.length);
    if (r < 0) throw radosError('rados_cluster_fsid', r);
    return buf.subarray(0, r).toString('utf8').replace(/\0.*$/, '');
  }

  /** An I/O context on `pool` (and `namespace`); pass it to fn, destroyed afterwards. */
  async withIoctx<T>(pool: string, namespace: string | undefined, fn: (io: unknown) => Promise<T>): Promise<T> {
    if (this.closed) throw new StorageError('failed_precondition', 'rados cluster handle is shut down');
    const out: unknown[] = [null];
    const r = await callAsync(this.l.rados_ioctx_create, this.handle, pool, out);
    if (r < 0) throw radosError(`opening pool ${pool}`, r);
    const io = out[0];
    try {
      if (namespace) this.l.rados_ioctx_set_namespace(io, namespace);
      return await fn(io);
    } finally {
      this.l.rados_ioctx_destroy(io);
    }
  }

  async shutdown(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await callAsync(this.l.rados_shutdown, this.handle);
  }
}

/** Connects, runs fn, always shuts the handle down. */
export async function withCluster<T>(o: RadosOptions, fn: (c: RadosCluster) => Promise<T>): Promise<T> {
  const c = await RadosCluster.connect(o);
  try {
    return await fn(c);
  } finally {
    await c.shutdown().catch(() => undefined);
  }
}

/** Splits "host:port" / "[v6]:port" / "host" (port 6789). */
export function splitHostPort(m: string): { host: string; port: number } {
  const s = m.replace(/^v[12]:/, '');
  const br = /^\[([^\]]+)\](?::(\d+))?$/.exec(s);
  if (br) return { host: br[1], port: br[2] ? +br[2] : 6789 };
  if (net.isIPv6(s)) return { host: s, port: 6789 };
  const i = s.lastIndexOf(':');
  return i >= 0 ? { host: s.slice(0, i), port: +s.slice(i + 1) } : { host: s, port: 6789 };
}

function tcpReachable(host: string, port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.createConnection({ host, port });
    const done = (ok: boolean) => { sock.destroy(); resolve(ok); };
    sock.setTimeout(timeoutMs, () => done(false));
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
  });
}

/** true when at least one monitor accepts a TCP connection within a second. */
export async function anyReachable(monitors: string[]): Promise<boolean> {
  const results = await Promise.all(monitors.map((m) => {
    const { host, port } = splitHostPort(m);
    return tcpReachable(host, port, 1000);
  }));
  return results.some(Boolean);
}
