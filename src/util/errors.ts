// One error family for the whole daemon. Every layer throws PodvisorError with a code named
// after the gRPC canonical codes ('not_found', 'failed_precondition' …); the CRI server, the CSI
// plugin and the CLI turn the code into a status or an exit message at the edge. Callers decide
// by the code (`hasCode`), never by class names or message text. The trade-off: the codes are
// gRPC's, so a domain error that means something else must pick the nearest one; in exchange
// no layer below the gRPC adapters imports them, and nothing is mapped twice.
import { status } from '@grpc/grpc-js';

export const ERROR_CODES = [
  'cancelled', 'unknown', 'invalid_argument', 'deadline_exceeded', 'not_found', 'already_exists',
  'permission_denied', 'resource_exhausted', 'failed_precondition', 'aborted', 'out_of_range',
  'unimplemented', 'internal', 'unavailable', 'data_loss', 'unauthenticated',
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

export class PodvisorError extends Error {
  constructor(readonly code: ErrorCode, message: string) {
    super(message);
    this.name = 'PodvisorError';
  }
}

export const invalidArgument = (msg: string) => new PodvisorError('invalid_argument', msg);
export const notFound = (msg: string) => new PodvisorError('not_found', msg);
export const alreadyExists = (msg: string) => new PodvisorError('already_exists', msg);
export const failedPrecondition = (msg: string) => new PodvisorError('failed_precondition', msg);
export const unavailable = (msg: string) => new PodvisorError('unavailable', msg);
export const deadlineExceeded = (msg: string) => new PodvisorError('deadline_exceeded', msg);
export const internal = (msg: string) => new PodvisorError('internal', msg);
export const unimplemented = (msg: string) => new PodvisorError('unimplemented', msg);
export const permissionDenied = (msg: string) => new PodvisorError('permission_denied', msg);
export const unauthenticated = (msg: string) => new PodvisorError('unauthenticated', msg);
export const resourceExhausted = (msg: string) => new PodvisorError('resource_exhausted', msg);
export const cancelled = (msg: string) => new PodvisorError('cancelled', msg);
export const dataLoss = (msg: string) => new PodvisorError('data_loss', msg);

/** True when `err` is one of ours (with any of `codes`, when given). */
export function hasCode(err: unknown, ...codes: ErrorCode[]): err is PodvisorError {
  return err instanceof PodvisorError && (codes.length === 0 || codes.includes(err.code));
}

/**
 * The same failure told from the caller's point of view: "<what>: <message>", code kept. Anything
 * that is not ours passes through unchanged (the server reports it as INTERNAL and logs it).
 */
export function inContext(err: unknown, what: string): Error {
  if (err instanceof PodvisorError) {
    const e = new PodvisorError(err.code, `${what}: ${err.message}`);
    e.stack = err.stack;
    return e;
  }
  return err instanceof Error ? err : new Error(String(err));
}

/** Throws INVALID_ARGUMENT unless `value` is a non-empty string. */
export function requireString(value: unknown, what: string): string {
  if (typeof value !== 'string' || value.length === 0) throw invalidArgument(`${what} is required`);
  return value;
}

const GRPC: Record<ErrorCode, status> = {
  cancelled: status.CANCELLED,
  unknown: status.UNKNOWN,
  invalid_argument: status.INVALID_ARGUMENT,
  deadline_exceeded: status.DEADLINE_EXCEEDED,
  not_found: status.NOT_FOUND,
  already_exists: status.ALREADY_EXISTS,
  permission_denied: status.PERMISSION_DENIED,
  resource_exhausted: status.RESOURCE_EXHAUSTED,
  failed_precondition: status.FAILED_PRECONDITION,
  aborted: status.ABORTED,
  out_of_range: status.OUT_OF_RANGE,
  unimplemented: status.UNIMPLEMENTED,
  internal: status.INTERNAL,
  unavailable: status.UNAVAILABLE,
  data_loss: status.DATA_LOSS,
  unauthenticated: status.UNAUTHENTICATED,
};

/** The gRPC status for a code (for the gRPC servers at the edge). */
export function grpcStatus(code: ErrorCode): status {
  return GRPC[code];
}

/** gRPC-style error object for grpc-js callbacks: ours keep their code, anything else is INTERNAL. */
export function toGrpcError(err: unknown): { code: status; details: string; message: string } {
  if (err instanceof PodvisorError) return { code: grpcStatus(err.code), details: err.message, message: err.message };
  const msg = err instanceof Error ? err.message : String(err);
  return { code: status.INTERNAL, details: msg, message: msg };
}
