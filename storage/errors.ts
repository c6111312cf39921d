// Storage errors carry a gRPC status code so the CRI server and the CSI plugin can answer with
// the right status without guessing from messages. librados/librbd return negative errno values;
// errnoToStatus maps the ones that mean something to a caller.
import { status } from '@grpc/grpc-js';

export class StorageError extends Error {
  constructor(readonly code: status, message: string, readonly errno?: number) {
    super(message);
    this.name = 'StorageError';
  }
}

export const invalid = (msg: string) => new StorageError(status.INVALID_ARGUMENT, msg);
export const notFound = (msg: string) => new StorageError(status.NOT_FOUND, msg);
export const precondition = (msg: string) => new StorageError(status.FAILED_PRECONDITION, msg);
export const unavailable = (msg: string) => new StorageError(status.UNAVAILABLE, msg);
export const internal = (msg: string) => new StorageError(status.INTERNAL, msg);

// Linux errno values (x86-64 / generic): the ones librados and librbd hand back.
export const Errno = {
  EPERM: 1, ENOENT: 2, EIO: 5, ENXIO: 6, E2BIG: 7, EAGAIN: 11, ENOMEM: 12, EACCES: 13, EBUSY: 16, EEXIST: 17,
  ENODEV: 19, EINVAL: 22, EFBIG: 27, ENOSPC: 28, EROFS: 30, ERANGE: 34, ENAMETOOLONG: 36, ENOSYS: 38, ENOTEMPTY: 39,
  EDQUOT: 122, ENOTSUP: 95, ECONNREFUSED: 111, ETIMEDOUT: 110, ENOTCONN: 107, ESHUTDOWN: 108, EHOSTUNREACH: 113,
  ECANCELED: 125, EKEYREJECTED: 129,
} as const;

const NAMES: Record<number, string> = Object.fromEntries(Object.entries(Errno).map(([k, v]) => [v, k]));

export function errnoName(errno: number): string {
  return NAMES[Math.abs(errno)] ?? `errno ${Math.abs(errno)}`;
}

export function errnoToStatus(errno: number): status {
  switch (Math.abs(errno)) {
    case Errno.ENOENT: case Errno.ENXIO: case Errno.ENODEV: return status.NOT_FOUND;
    case Errno.EEXIST: return status.ALREADY_EXISTS;
    case Errno.EACCES: case Errno.EPERM: case Errno.EKEYREJECTED: return status.PERMISSION_DENIED;
    case Errno.ETIMEDOUT: case Errno.ENOTCONN: case Errno.ECONNREFUSED: case Errno.EHOSTUNREACH: case Errno.ESHUTDOWN:
    case Errno.EAGAIN:
      return status.UNAVAILABLE;
    case Errno.EINVAL: case Errno.ERANGE: case Errno.ENAMETOOLONG: case Errno.EFBIG: return status.INVALID_ARGUMENT;
    case Errno.EBUSY: case Errno.ENOTEMPTY: case Errno.EROFS: return status.FAILED_PRECONDITION;
    case Errno.ENOSPC: case Errno.EDQUOT: case Errno.ENOMEM: return status.RESOURCE_EXHAUSTED;
    case Errno.ENOSYS: case Errno.ENOTSUP: return status.UNIMPLEMENTED;
    default: return status.INTERNAL;
  }
}

const HINTS: Partial<Record<number, string>> = {
  [Errno.ENOENT]: 'not found',
  [Errno.EEXIST]: 'already exists',
  [Errno.EACCES]: 'permission denied (wrong key or missing caps?)',
  [Errno.EPERM]: 'operation not permitted (wrong key or missing caps?)',
  [Errno.ETIMEDOUT]: 'timed out (monitors unreachable or wrong address?)',
  [Errno.ENOTCONN]: 'not connected to the cluster',
  [Errno.EBUSY]: 'busy (image still open or watched by a client?)',
};

/** Builds the StorageError for a failed librados/librbd call (`rc` < 0). */
export function radosError(what: string, rc: number): StorageError {
  const e = Math.abs(rc);
  return new StorageError(errnoToStatus(e), `${what}: ${HINTS[e] ?? errnoName(e)} (${errnoName(e)})`, e);
}

/** gRPC-style error object for grpc-js callbacks. */
export function toGrpcError(err: unknown): { code: status; details: string; message: string } {
  if (err instanceof StorageError) return { code: err.code, details: err.message, message: err.message };
  const msg = err instanceof Error ? err.message : String(err);
  return { code: status.INTERNAL, details: msg, message: msg };
}
