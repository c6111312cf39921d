// The gRPC server: CRI RuntimeService and ImageService on a unix socket. Every RPC of the API
// is registered: real handlers where they exist, UNIMPLEMENTED with a message elsewhere, so a
// client never sees a crash or a silent OK. Server-streaming RPCs get a StreamSink; the
// Stream* list variants are served from their List RPC (list-streams.ts). Every call's end is
// told to an optional observer (method, gRPC code name, seconds): the daemon's metrics.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { IMAGE_METHODS, loadCri, RUNTIME_METHODS, STREAMING_METHODS } from '../cri-api';
import { grpcStatus, PodvisorError } from './util/errors';
import { listStreamHandlers } from './cri/list-streams';
import type { Logger } from './util/log';

import type { CallContext, Handlers, StreamHandlers, StreamSink } from './cri/handlers';

export type { CallContext, Handlers, StreamHandlers, StreamSink, UnaryHandler, StreamHandler } from './cri/handlers';

/** Told of every call when it ends: the method, its gRPC status code name ('OK', 'NOT_FOUND' …), its seconds. */
export type GrpcCallObserver = (method: string, code: string, seconds: number) => void;

const codeName = (code: grpc.status | undefined): string => grpc.status[code ?? grpc.status.UNKNOWN] ?? 'UNKNOWN';

function sinkOf(call: grpc.ServerWritableStream<any, any>): StreamSink {
  let closed = false;
  let setGone!: () => void;
  const gone = new Promise<void>((r) => (setGone = r));
  const close = () => {
    closed = true;
    setGone();
  };
  call.once('cancelled', close);
  call.once('close', close);
  call.once('error', close);
  return {
    get closed() {
      return closed;
    },
    gone,
    async write(msg) {
      if (closed) return;
      if (call.write(msg)) return;
      await Promise.race([new Promise<void>((r) => call.once('drain', () => r())), gone]);
    },
  };
}

const QUIET = new Set(['Version', 'Status', 'ListPodSandbox', 'ListContainers', 'PodSandboxStatus', 'ContainerStatus', 'ImageStatus', 'ListImages', 'ImageFsInfo', 'ListContainerStats', 'ListPodSandboxStats']);

function toStatus(err: unknown, method: string, logger: Logger): Partial<grpc.StatusObject> {
  if (err instanceof PodvisorError) {
    if (err.code !== 'not_found') logger.info({ method, code: err.code, msg: err.message }, 'rpc refused');
    return { code: grpcStatus(err.code), details: err.message };
  }
  logger.error({ method, err }, 'rpc failed');
  return { code: grpc.status.INTERNAL, details: `${method}: ${(err as Error)?.message ?? String(err)}` };
}

/** The call's deadline as grpc-js gives it (a Date, a number of ms, or Infinity for none). */
export function callContext(call: { getDeadline(): grpc.Deadline }): CallContext {
  const d = call.getDeadline();
  const ms = d instanceof Date ? d.getTime() : d;
  return Number.isFinite(ms) ? { deadline: ms } : {};
}

function implement(methods: string[], handlers: Handlers, streams: StreamHandlers, logger: Logger, observe: GrpcCallObserver): grpc.UntypedServiceImplementation {
  const impl: grpc.UntypedServiceImplementation = {};
  const since = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e9;
  const allStreams = { ...listStreamHandlers(handlers), ...streams };
  for (const method of methods) {
    if (STREAMING_METHODS.has(method)) {
      const fn = allStreams[method];
      impl[method] = (call: grpc.ServerWritableStream<any, any>) => {
        const t0 = process.hrtime.bigint();
        if (!fn) {
          call.emit('error', { code: grpc.status.UNIMPLEMENTED, details: `${method} is not implemented by podvisor yet` });
          observe(method, 'UNIMPLEMENTED', 0);
          return;
        }
        const sink = sinkOf(call);
        fn((call.request ?? {}) as never, sink).then(
          () => {
            observe(method, sink.closed ? 'CANCELLED' : 'OK', since(t0));
            if (!sink.closed) call.end();
          },
          (err) => {
            const status = toStatus(err, method, logger);
            observe(method, sink.closed ? 'CANCELLED' : codeName(status.code), since(t0));
            if (!sink.closed) call.emit('error', status);
          },
        );
      };
      continue;
    }
    const fn = handlers[method];
    impl[method] = (call: grpc.ServerUnaryCall<any, any>, callback: grpc.sendUnaryData<any>) => {
      if (!fn) {
        callback({ code: grpc.status.UNIMPLEMENTED, details: `${method} is not implemented by podvisor yet` });
        observe(method, 'UNIMPLEMENTED', 0);
        return;
      }
      const t0 = process.hrtime.bigint();
      fn((call.request ?? {}) as never, callContext(call)).then(
        (res) => {
          if (!QUIET.has(method)) logger.debug({ method, ms: since(t0) * 1e3 }, 'rpc');
          observe(method, 'OK', since(t0));
          callback(null, res);
        },
        (err) => {
          const status = toStatus(err, method, logger);
          observe(method, codeName(status.code), since(t0));
          callback(status);
        },
      );
    };
  }
  return impl;
}

/** Fails if a live server owns the socket; removes a stale one. */
async function claimSocket(socket: string): Promise<void> {
  if (!fs.existsSync(socket)) return;
  const live = await new Promise<boolean>((resolve) => {
    const c = net.createConnection(socket);
    c.once('connect', () => { c.destroy(); resolve(true); });
    c.once('error', () => resolve(false));
  });
  if (live) throw new Error(`another server is already listening on ${socket}; refusing to replace it`);
  await fsp.rm(socket, { force: true });
}

export async function startServer(
  socket: string, runtime: Handlers, image: Handlers, logger: Logger, streams: StreamHandlers = {}, observe: GrpcCallObserver = () => undefined,
): Promise<grpc.Server> {
  const cri = loadCri();
  const server = new grpc.Server({ 'grpc.max_receive_message_length': 16 * 1024 * 1024, 'grpc.max_send_message_length': 64 * 1024 * 1024 });
  server.addService(cri.runtime, implement(RUNTIME_METHODS, runtime, streams, logger, observe));
  server.addService(cri.image, implement(IMAGE_METHODS, image, streams, logger, observe));
  await fsp.mkdir(path.dirname(socket), { recursive: true });
  await claimSocket(socket);
  // The socket file is created with the process umask's permissions. It is bound inside a
  // fresh 0700 directory, given 0660 there, and only then renamed into place: at no moment can
  // anyone but root reach a socket with looser permissions.
  const hidden = await fsp.mkdtemp(path.join(path.dirname(socket), '.'));
  try {
    const tmp = path.join(hidden, 's');
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(`unix://${tmp}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
    );
    await fsp.chmod(tmp, 0o660);
    await fsp.rename(tmp, socket);
  } catch (err) {
    server.forceShutdown();
    throw err;
  } finally {
    await fsp.rm(hidden, { recursive: true, force: true });
  }
  return server;
}
