// Exec and attach sessions, independent of the wire protocol: the SPDY or WebSocket layer hands
// over Node streams for stdin/stdout/stderr/resize/error, this runs the command through the
// backend and reports how it ended on the error stream, as kubelet's remotecommand server does.
import type { Readable, Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import type { Logger } from '../util/log';
import type { ProcessIO, StreamingBackend, TerminalSize } from './backend';
import type { AttachRequest, ExecRequest } from './tokens';

/** remotecommand subprotocols over SPDY, preferred first */
export const SPDY_REMOTECOMMAND_PROTOCOLS = [
  'v5.channel.k8s.io',
  'v4.channel.k8s.io',
  'v3.channel.k8s.io',
  'v2.channel.k8s.io',
  'channel.k8s.io',
];

/** remotecommand subprotocols over WebSocket, preferred first */
export const WS_REMOTECOMMAND_PROTOCOLS = [
  'v5.channel.k8s.io',
  'v4.channel.k8s.io',
  'v4.base64.channel.k8s.io',
  'channel.k8s.io',
  'base64.channel.k8s.io',
];

/** WebSocket channel numbers */
export const Channel = { stdin: 0, stdout: 1, stderr: 2, error: 3, resize: 4 } as const;

/** v4+ report a Status object on the error stream; older protocols only a failure's text. */
export const statusAsJson = (protocol: string) => /^v[45]\./.test(protocol);

/** Resize support: v3+ over SPDY; the WebSocket protocols always carry channel 4. */
export const spdyHasResize = (protocol: string) => /^v[345]\./.test(protocol);

export interface CommandStreams {
  stdin?: Readable;
  stdout?: Writable;
  stderr?: Writable;
  /** the client's terminal sizes: a byte stream of JSON objects {"Width":…,"Height":…} */
  resize?: Readable;
  error: Writable;
}

export interface Status {
  metadata: Record<string, never>;
  status: 'Success' | 'Failure';
  message?: string;
  reason?: string;
  details?: { causes: Array<{ reason?: string; message: string }> };
  code?: number;
}

export const successStatus = (): Status => ({ metadata: {}, status: 'Success' });

/** As kubelet reports a non-zero exit (exec.CodeExitError through remotecommand). */
export function exitStatus(cmd: string[], exitCode: number): Status {
  return {
    metadata: {},
    status: 'Failure',
    message: `command terminated with non-zero exit code: error executing command [${cmd.join(' ')}], exit code ${exitCode}`,
    reason: 'NonZeroExitCode',
    details: { causes: [{ reason: 'ExitCode', message: String(exitCode) }] },
  };
}

/** apierrors.NewInternalError */
export function internalErrorStatus(err: unknown): Status {
  const msg = err instanceof Error ? err.message : String(err);
  return {
    metadata: {},
    status: 'Failure',
    message: `Internal error occurred: ${msg}`,
    reason: 'InternalError',
    details: { causes: [{ message: msg }] },
    code: 500,
  };
}

/** The bytes written on the error stream for a status under a protocol (empty: write nothing). */
export function encodeStatus(status: Status, protocol: string): Buffer {
  if (statusAsJson(protocol)) return Buffer.from(JSON.stringify(status));
  return status.status === 'Success' ? Buffer.alloc(0) : Buffer.from(status.message ?? 'error');
}

/**
 * Terminal sizes for the backend. Read eagerly from the client so that a backend that never
 * looks at them cannot stall the connection; only the newest few sizes are kept.
 */
export class ResizeQueue implements AsyncIterable<TerminalSize> {
  private readonly pending: TerminalSize[] = [];
  private waiter: ((r: IteratorResult<TerminalSize>) => void) | null = null;
  private done = false;

  constructor(private readonly max = 8) {}

  push(size: TerminalSize): void {
    if (this.done) return;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w({ value: size, done: false });
      return;
    }
    this.pending.push(size);
    if (this.pending.length > this.max) this.pending.shift();
  }

  end(): void {
    this.done = true;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w({ value: undefined, done: true });
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<TerminalSize> {
    return {
      next: () => {
        const size = this.pending.shift();
        if (size) return Promise.resolve({ value: size, done: false });
        if (this.done) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => (this.waiter = resolve));
      },
      return: () => {
        this.end();
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}

/** Feeds a ResizeQueue from a stream of concatenated (or newline-separated) JSON objects. */
export function readResizes(source: Readable, queue: ResizeQueue, log: Logger): void {
  let buf = '';
  source.setEncoding('utf8');
  source.on('data', (text: string) => {
    buf += text;
    for (;;) {
      const start = buf.indexOf('{');
      const end = buf.indexOf('}', start);
      if (start < 0 || end < 0) break;
      const json = buf.slice(start, end + 1);
      buf = buf.slice(end + 1);
      try {
        const o = JSON.parse(json) as Record<string, unknown>;
        const width = Number(o.Width ?? o.width);
        const height = Number(o.Height ?? o.height);
        if (Number.isInteger(width) && Number.isInteger(height) && width >= 0 && height >= 0 && width < 65536 && height < 65536) {
          queue.push({ width, height });
        }
      } catch {
        log.debug({ json }, 'ignoring malformed resize message');
      }
    }
    if (buf.length > 4096) buf = '';
  });
  source.on('end', () => queue.end());
  source.on('close', () => queue.end());
  source.on('error', () => queue.end());
}

/** Ends a writable and waits until what it took was handed on (or it was torn down). */
async function endAndFlush(w: Writable | undefined): Promise<void> {
  if (!w || w.destroyed) return;
  if (!w.writableEnded) w.end();
  await finished(w, { readable: false } as Parameters<typeof finished>[1]).catch(() => undefined);
}

/** Runs an exec or attach over the given streams and writes the outcome on the error stream. */
export async function serveRemoteCommand(
  backend: StreamingBackend,
  req: ExecRequest | AttachRequest,
  streams: CommandStreams,
  protocol: string,
  log: Logger,
): Promise<void> {
  let resize: ResizeQueue | undefined;
  if (streams.resize) {
    resize = new ResizeQueue();
    readResizes(streams.resize, resize, log);
  }
  const io: ProcessIO = {
    stdin: streams.stdin,
    stdout: streams.stdout,
    stderr: req.tty ? undefined : streams.stderr,
    tty: req.tty,
    resize,
  };
  let status: Status;
  try {
    if (req.kind === 'exec') {
      const { exitCode } = await backend.exec(req.containerId, req.cmd, io);
      status = exitCode === 0 ? successStatus() : exitStatus(req.cmd, exitCode);
    } else {
      await backend.attach(req.containerId, io);
      status = successStatus();
    }
  } catch (err) {
    log.info({ err, kind: req.kind, container: req.containerId }, 'streaming command failed');
    status = internalErrorStatus(err);
  }
  resize?.end();
  // all output first, then the status: clients stop reading once they have it
  await Promise.all([endAndFlush(io.stdout), endAndFlush(io.stderr)]);
  const body = encodeStatus(status, protocol);
  if (!streams.error.destroyed) {
    if (body.length) streams.error.write(body);
    await endAndFlush(streams.error);
  }
}
