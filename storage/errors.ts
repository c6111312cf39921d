// Storage errors are the daemon's one error family (src/util/errors.ts) with the errno of a
// failed librados/librbd call kept beside the code, so the CRI server and the CSI plugin answer
// with the right status without guessing from messages; errnoToCode maps the errno values that
// mean something to a caller.
import { ErrorCode, PodvisorError } from '../src/util/errors';

export { toGrpcError } from '../src/util/errors';

export class StorageError extends PodvisorError {
  constructor(code: ErrorCode, message: string, readonly errno?: number) {
    super(code, message);
    this.name = 'StorageError';
  }
}

export const invalid = (msg: string) => new StorageError('invalid_argument', msg);
export const notFound = (msg: string) => new StorageError('not_found', msg);
export const precondition = (msg: string) => new StorageError('failed_precondition', msg);
export const unavailable = (msg: string) => new StorageError('unavailable', msg);
export const internal = (msg: string) => new StorageError('internal', msg);

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

export function errnoToCode(errno: number): ErrorCode {
  switch (Math.abs(errno)) {
    case Errno.ENOENT: case Errno.ENXIO: case Errno.ENODEV: return 'not_found';
    case Errno.EEXIST: return 'already_exists';
    case Errno.EACCES: case Errno.EPERM: case Errno.EKEYREJECTED: return 'permission_denied';
    case Errno.ETIMEDOUT: case Errno.ENOTCONN: case Errno.ECONNREFUSED: case Errno.EHOSTUNREACH: case Errno.ESHUTDOWN:
    case Errno.EAGAIN:
      return 'unavailable';
    case Errno.EINVAL: case Errno.ERANGE: case Errno.ENAMETOOLONG: case Errno.EFBIG: return 'invalid_argument';
    case Errno.EBUSY: case Errno.ENOTEMPTY: case Errno.EROFS: return 'failed_precondition';
    case Errno.ENOSPC: case Errno.EDQUOT: case Errno.ENOMEM: return 'resource_exhausted';
    case Errno.ENOSYS: case Errno.ENOTSUP: return 'unimplemented';
    default: return 'internal';
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
  return new StorageError(errnoToCode(e), `${what}: ${HINTS[e] ?? errnoName(e)} (${errnoName(e)})`, e);
}
