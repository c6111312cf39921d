// Host side of the guest agent protocol: requests with ids and timeouts, events, and byte
// streams with credit-based flow control (guest/PROTOCOL.md). One AgentClient per pod VM.
// Any protocol violation by the guest closes the connection; callers see AgentError and the
// pod is failed, the daemon carries on.
import { EventEmitter } from 'node:events';
import type net from 'node:net';
import { connectWhenReady } from '../util/unix-socket';
import { Duplex } from 'node:stream';
import {
  encodeCredit,
  encodeFrame,
  encodeJson,
  Frame,
  FrameDecoder,
  INITIAL_WINDOW,
  Kind,
  MAX_DATA,
  parseJsonObject,
  ProtocolError,
} from './protocol';
import { AgentError } from './errors';
import type { GuestMethod, GuestParams, GuestResult } from './api';

export { AgentError } from './errors';

export interface AgentEvent {
  type: string;
  [key: string]: unknown;
}

interface Pending {
  resolve: (v: any) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
  method: string;
}

const DEFAULT_TIMEOUT_MS = 30_000;

/**
 * Told of every request when it ends: the method, its time and, when it failed, the daemon's
 * error code for it (never the guest's own code, which is untrusted and unbounded). The daemon
 * turns these into its agent RPC metrics; the client knows nothing of metrics.
 */
export type AgentCallObserver = (method: string, seconds: number, errorCode?: string) => void;

export class AgentClient extends EventEmitter {
  private readonly decoder = new FrameDecoder();
  private readonly pending = new Map<number, Pending>();
  private readonly streams = new Map<number, AgentStream>();
  private nextId = 1;
  private closedError: Error | undefined;

  private constructor(private readonly sock: net.Socket, private readonly observe?: AgentCallObserver) {
    super();
    sock.on('data', (chunk: Buffer) => this.onData(chunk));
    sock.on('error', (err) => this.shutdown(new AgentError('unavailable', `agent connection: ${err.message}`)));
    sock.on('close', () => this.shutdown(new AgentError('unavailable', 'agent connection closed')));
  }

  /** Connects to the agent's unix socket, retrying while QEMU has not created it yet. */
  static async connect(path: string, timeoutMs = 10_000, observe?: AgentCallObserver): Promise<AgentClient> {
    try {
      return await connectWhenReady(path, timeoutMs, async (sock) => new AgentClient(sock, observe));
    } catch (err) {
      throw new AgentError('unavailable', `cannot connect to agent socket ${path}: ${(err as Error).message}`);
    }
  }

  /** Speaks the protocol over a connection that is already open (e.g. one a driver opened before a clone resumed). */
  static over(sock: net.Socket, observe?: AgentCallObserver): AgentClient {
    const client = new AgentClient(sock, observe);
    if (sock.destroyed) client.shutdown(new AgentError('unavailable', 'agent connection closed'));
    return client;
  }

  get closed(): boolean {
    return this.closedError !== undefined;
  }

  /** Calls one method of the guest API (api.ts); resolves with its result, or rejects with AgentError. */
  call<M extends GuestMethod>(method: M, params: GuestParams<M>, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<GuestResult<M>> {
    return this.request(method, params, timeoutMs) as Promise<GuestResult<M>>;
  }

  /** Sends any request (the frame layer, for protocol tests): prefer the typed call(). */
  request(method: string, params: object = {}, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<unknown> {
    if (this.closedError) {
      this.observe?.(method, 0, this.closedError instanceof AgentError ? this.closedError.code : 'unavailable');
      return Promise.reject(this.closedError);
    }
    const id = this.allocId();
    const t0 = process.hrtime.bigint();
    const done = this.observe && ((err?: unknown) => this.observe!(method, Number(process.hrtime.bigint() - t0) / 1e9, err === undefined ? undefined : err instanceof AgentError ? err.code : 'internal'));
    const answer = new Promise<unknown>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new AgentError('timeout', `agent did not answer ${method} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer, method });
      this.sock.write(encodeJson(Kind.Req, id, { method, params }));
    });
    if (done) answer.then(() => done(), (err) => done(err));
    return answer;
  }

  /** Opens a stream with a fresh id. The id goes into the request that uses it. */
  openStream(): AgentStream {
    if (this.closedError) throw this.closedError;
    const id = this.allocId();
    const s = new AgentStream(id, this);
    this.streams.set(id, s);
    s.once('close', () => this.streams.delete(id));
    return s;
  }

  /** Re-creates the host end of a stream the guest still has open (after a daemon restart). */
  adoptStream(id: number): AgentStream {
    if (this.closedError) throw this.closedError;
    if (id === 0 || this.streams.has(id)) throw new AgentError('invalid_argument', `stream ${id} cannot be adopted`);
    const s = new AgentStream(id, this);
    this.streams.set(id, s);
    s.once('close', () => this.streams.delete(id));
    return s;
  }

  close(): void {
    this.sock.destroy();
    this.shutdown(new AgentError('unavailable', 'agent connection closed by host'));
  }

  /** @internal used by AgentStream */
  send(frame: Buffer, cb?: (err?: Error | null) => void): void {
    if (this.closedError) {
      cb?.(this.closedError);
      return;
    }
    if (this.sock.write(frame)) cb?.();
    else this.sock.once('drain', () => cb?.());
  }

  private allocId(): number {
    // Ids are shared between requests and streams; skip 0 and any still in use.
    do {
      this.nextId = this.nextId >= 0xffffffff ? 1 : this.nextId + 1;
    } while (this.pending.has(this.nextId) || this.streams.has(this.nextId));
    return this.nextId;
  }

  private onData(chunk: Buffer): void {
    let frames: Frame[];
    try {
      frames = this.decoder.push(chunk);
      for (const f of frames) this.dispatch(f);
    } catch (err) {
      const e = err instanceof ProtocolError ? err : new ProtocolError((err as Error).message);
      this.emit('protocol-error', e);
      this.sock.destroy();
      this.shutdown(new AgentError('protocol', e.message));
    }
  }

  private dispatch(f: Frame): void {
    switch (f.kind) {
      case Kind.Resp: {
        const p = this.pending.get(f.id);
        if (!p) return; // late answer after a timeout: ignore
        this.pending.delete(f.id);
        clearTimeout(p.timer);
        const msg = parseJsonObject(f.payload);
        if (msg.error && typeof msg.error === 'object') {
          const e = msg.error as { code?: unknown; message?: unknown };
          p.reject(new AgentError(String(e.code ?? 'internal').slice(0, 64), `${p.method}: ${String(e.message ?? 'agent error').slice(0, 4096)}`));
        } else if ('result' in msg) {
          p.resolve(msg.result);
        } else {
          throw new ProtocolError('response has neither result nor error');
        }
        return;
      }
      case Kind.Event: {
        const ev = parseJsonObject(f.payload);
        if (typeof ev.type !== 'string') throw new ProtocolError('event without type');
        this.emit('event', ev as AgentEvent);
        return;
      }
      case Kind.Data:
      case Kind.Credit:
      case Kind.Eof:
      case Kind.Reset: {
        const s = this.streams.get(f.id);
        // Unknown stream: dropped without a RESET. After a daemon restart the guest may send
        // for streams the host has not re-adopted yet (guest/PROTOCOL.md, Handshake).
        if (!s) return;
        s.onFrame(f);
        return;
      }
    }
  }

  private shutdown(err: Error): void {
    if (this.closedError) return;
    this.closedError = err;
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.pending.clear();
    for (const s of [...this.streams.values()]) s.destroy(err);
    this.emit('close', err);
  }
}

/**
 * One protocol stream as a Node Duplex. Reading: data from the guest, with credit granted only
 * as the consumer reads (back-pressure reaches the guest process). Writing: data to the guest,
 * sent only while the guest's window allows.
 */
export class AgentStream extends Duplex {
  private sendWindow = INITIAL_WINDOW; // bytes we may still send
  private peerWindow = INITIAL_WINDOW; // bytes the guest may still send
  private unacked = 0; // bytes consumed locally but not yet credited back
  private waiting: (() => void) | undefined;
  private remoteEnded = false;

  constructor(readonly id: number, private readonly agent: AgentClient) {
    super({ allowHalfOpen: true, readableHighWaterMark: 64 * 1024 });
    // A dead VM errors every stream; consumers learn of it through their own listeners or
    // iterators. This keeps an unobserved stream from taking the daemon down with it.
    this.on('error', () => undefined);
  }

  /** @internal */
  onFrame(f: Frame): void {
    switch (f.kind) {
      case Kind.Data:
        this.peerWindow -= f.payload.length;
        if (this.peerWindow < 0) throw new ProtocolError(`stream ${this.id}: guest exceeded its window`);
        this.unacked += f.payload.length;
        this.push(f.payload);
        return;
      case Kind.Credit:
        this.sendWindow += f.payload.readUInt32BE(0);
        if (this.sendWindow > 1 << 30) throw new ProtocolError(`stream ${this.id}: absurd credit`);
        this.waiting?.();
        return;
      case Kind.Eof:
        if (!this.remoteEnded) {
          this.remoteEnded = true;
          this.push(null);
        }
        return;
      case Kind.Reset:
        this.destroy(new AgentError('reset', `stream ${this.id} reset by guest`));
        return;
    }
  }

  override _read(): void {
    if (this.unacked > 0) {
      const n = this.unacked;
      this.unacked = 0;
      this.peerWindow += n;
      this.agent.send(encodeCredit(this.id, n));
    }
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.writeChunks(chunk).then(() => cb(), cb);
  }

  private async writeChunks(chunk: Buffer): Promise<void> {
    let off = 0;
    while (off < chunk.length) {
      while (this.sendWindow <= 0) {
        await new Promise<void>((resolve) => (this.waiting = resolve));
        this.waiting = undefined;
        if (this.destroyed) throw new AgentError('reset', `stream ${this.id} closed`);
      }
      const n = Math.min(chunk.length - off, MAX_DATA, this.sendWindow);
      this.sendWindow -= n;
      const part = chunk.subarray(off, off + n);
      off += n;
      await new Promise<void>((resolve, reject) => this.agent.send(encodeFrame(Kind.Data, this.id, part), (e) => (e ? reject(e) : resolve())));
    }
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.agent.send(encodeFrame(Kind.Eof, this.id), cb);
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.waiting?.();
    if (err || !this.remoteEnded) this.agent.send(encodeFrame(Kind.Reset, this.id));
    cb(err);
  }
}
