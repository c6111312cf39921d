// gRPC status errors for CRI handlers. Handlers throw CriError; the server turns it into a
// status with that code. Anything else thrown becomes INTERNAL (and is logged), so a bug never
// crashes the daemon or turns into a silent OK.
import { status } from '@grpc/grpc-js';

export { status as Code };

export class CriError extends Error {
  constructor(readonly code: status, message: string) {
    super(message);
    this.name = 'CriError';
  }
}

export const invalidArgument = (msg: string) => new CriError(status.INVALID_ARGUMENT, msg);
export const notFound = (msg: string) => new CriError(status.NOT_FOUND, msg);
export const alreadyExists = (msg: string) => new CriError(status.ALREADY_EXISTS, msg);
export const failedPrecondition = (msg: string) => new CriError(status.FAILED_PRECONDITION, msg);
export const unavailable = (msg: string) => new CriError(status.UNAVAILABLE, msg);
export const deadlineExceeded = (msg: string) => new CriError(status.DEADLINE_EXCEEDED, msg);
export const internal = (msg: string) => new CriError(status.INTERNAL, msg);
export const unimplemented = (msg: string) => new CriError(status.UNIMPLEMENTED, msg);
export const permissionDenied = (msg: string) => new CriError(status.PERMISSION_DENIED, msg);
export const unauthenticated = (msg: string) => new CriError(status.UNAUTHENTICATED, msg);
export const resourceExhausted = (msg: string) => new CriError(status.RESOURCE_EXHAUSTED, msg);

/** Throws INVALID_ARGUMENT unless `value` is a non-empty string. */
export function requireString(value: unknown, what: string): string {
  if (typeof value !== 'string' || value.length === 0) throw invalidArgument(`${what} is required`);
  return value;
}
