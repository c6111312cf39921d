// SPDY/3.1 server sessions as Kubernetes' streaming clients use them (kubectl, crictl,
// client-go → k8s.io/apimachinery httpstream/spdy → moby/spdystream): after an HTTP upgrade
// the client opens streams with SYN_STREAM, each named by a `streamType` header (and `port` /
// `requestID` for port-forward); the server answers every stream with SYN_REPLY, and either
// side half-closes with FIN or cancels with RST_STREAM.
//
// Written by hand instead of on spdy-transport 3, which does not fit these peers:
// - its parser rejects SYN_STREAM frames without `:method`/`:path` as a protocol error, and
//   spdystream never sends those;
// - it blocks sending once the peer's 64 KiB flow-control window is used up, but spdystream
//   never sends WINDOW_UPDATE (it relies on TCP), so output would stall after 64 KiB;
// - it pushes received DATA into stream buffers without regard to the consumer, so a client
//   that ignores windows (spdystream again) could make the server buffer without bound.
// Here each stream is a Node Duplex: outgoing DATA waits for the socket to drain (back-pressure
// is TCP's, as with kubelet), and incoming DATA pauses the socket while a stream's reader is
// behind. WINDOW_UPDATEs are still sent as data is consumed, so peers that do honour SPDY/3.1
// flow control (spdy-transport clients) keep flowing; received WINDOW_UPDATEs are ignored.
//
// Bounds (one session is one untrusted client): header blocks as spdy-codec.ts bounds them (a
// block that breaks them is a protocol error that ends the session); at most MAX_STREAMS open
// streams (more are refused with RST_STREAM); every frame we write waits for the socket to
// drain, and while more than MAX_QUEUED_REPLIES replies (PING echoes, RST_STREAMs, SYN_REPLYs)
// wait to be written, frames from the client are not read: a client that sends PINGs and never
// reads cannot make us queue answers without bound.
import { EventEmitter } from 'node:events';
import type { IncomingMessage } from 'node:http';
import { Duplex } from 'node:stream';
import type { Logger } from '../util/log';
import {
  type ControlFrame,
  DEFAULT_WINDOW,
  FLAG_FIN,
  FLAG_UNIDIRECTIONAL,
  FrameParser,
  FrameType,
  HeaderCompression,
  type Headers,
  RstStatus,
  controlFrame,
  dataFrameHeader,
  goawayFrame,
  pingFrame,
  rstStreamFrame,
  synReplyBody,
  windowUpdateFrame,
} from './spdy-codec';

const MAX_DATA_FRAME = 32 * 1024;
/** Open streams per session (an exec uses ≤ 5, a port-forward 2 per connection). */
export const MAX_STREAMS = 512;
/** Replies queued behind a socket that does not drain before reading from the client stops. */
const MAX_QUEUED_REPLIES = 32;
const EMPTY = Buffer.alloc(0);

export class SpdyStream extends Duplex {
  /** bytes received and not yet acknowledged with WINDOW_UPDATE */
  unacked = 0;
  remoteClosed = false;

  constructor(
    private readonly session: SpdySession,
    readonly id: number,
    readonly headers: Headers,
  ) {
    // above the 64 KiB SPDY window: a client that honours flow control never fills it, so the
    // socket only pauses for clients that ignore windows (spdystream), as TCP back-pressure
    super({ allowHalfOpen: true, readableHighWaterMark: 256 * 1024 });
    // as WsChannel: a stream error (the client went away mid-write) must never be uncaught
    this.on('error', () => undefined);
  }

  override _read(): void {
    this.session.streamWantsData(this);
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.session.sendData(this, chunk, false, cb);
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.session.sendData(this, EMPTY, true, cb);
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.session.streamDestroyed(this);
    cb(err);
  }
}

export interface SpdySessionEvents {
  stream: (stream: SpdyStream) => void;
  close: () => void;
}

export declare interface SpdySession {
  on<E extends keyof SpdySessionEvents>(event: E, listener: SpdySessionEvents[E]): this;
  once<E extends keyof SpdySessionEvents>(event: E, listener: SpdySessionEvents[E]): this;
}

/** The server side of one SPDY/3.1 connection. Streams are accepted and replied to at once. */
export class SpdySession extends EventEmitter {
  private readonly streams = new Map<number, SpdyStream>();
  private readonly congested = new Set<SpdyStream>();
  private readonly compression = new HeaderCompression();
  private readonly parser: FrameParser;
  private lastStreamId = 0;
  private sessionUnacked = 0;
  private decoding = 0;
  private goingAway = false;
  private closed = false;
  private out: Promise<void> = Promise.resolve();
  private inQueue: Array<() => unknown> = [];
  private inBusy = false;
  /** frames queued by enqueue() and not yet written (and drained) */
  private queuedOut = 0;

  constructor(
    private readonly socket: Duplex,
    private readonly log: Logger,
  ) {
    super();
    this.parser = new FrameParser({
      control: (f) => this.schedule(() => this.onControl(f)),
      data: (id, chunk, fin) => this.schedule(() => this.onData(id, chunk, fin)),
      error: (err) => this.fail(err),
    });
    socket.on('data', (chunk: Buffer) => this.parser.push(chunk));
    socket.on('end', () => this.shutdown());
    socket.on('close', () => this.shutdown());
    socket.on('error', (err) => {
      this.log.debug({ err }, 'spdy socket error');
      this.shutdown();
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Bytes that arrived with the upgrade request, before the session existed. */
  feed(head: Buffer): void {
    if (head.length) this.parser.push(head);
  }

  /**
   * Sends GOAWAY after everything queued and leaves closing the connection to the client, as
   * clients drop frames they have not yet handled once the TCP connection ends (spdystream and
   * spdy-transport both do). A client that does not close gets its connection ended after
   * `graceMs`, and destroyed some time later.
   */
  close(graceMs = 5_000): void {
    if (this.closed || this.goingAway) return;
    this.goingAway = true;
    void this.enqueue(() => goawayFrame(this.lastStreamId))
      .catch(() => undefined)
      .then(() => {
        setTimeout(() => this.socket.end(), graceMs).unref();
        setTimeout(() => this.socket.destroy(), 2 * graceMs).unref();
      });
  }

  /** Tears everything down now. */
  destroy(): void {
    this.socket.destroy();
    this.shutdown();
  }

  // ---- inbound ----

  /** Frames are handled strictly in order; header decompression is async, so queue behind it. */
  private schedule(fn: () => unknown): void {
    this.inQueue.push(fn);
    if (!this.inBusy) void this.runInbound();
  }

  private async runInbound(): Promise<void> {
    this.inBusy = true;
    try {
      while (this.inQueue.length && !this.closed) {
        const r = this.inQueue.shift()!();
        if (r instanceof Promise) {
          this.decoding++;
          this.updateFlow();
          try {
            await r;
          } finally {
            this.decoding--;
            this.updateFlow();
          }
        }
      }
    } catch (err) {
      this.fail(err as Error);
    } finally {
      this.inBusy = false;
    }
  }

  private onControl(f: ControlFrame): unknown {
    switch (f.type) {
      case FrameType.SYN_STREAM:
        return this.onSynStream(f);
      case FrameType.RST_STREAM: {
        const stream = this.streams.get(f.body.readUInt32BE(0) & 0x7fffffff);
        if (stream) {
          stream.remoteClosed = true;
          this.streams.delete(stream.id);
          stream.destroy();
        }
        return;
      }
      case FrameType.PING: {
        const id = f.body.readUInt32BE(0);
        if (id % 2 === 1) return this.reply(() => pingFrame(id)); // the client's ping: echo it
        return;
      }
      case FrameType.GOAWAY:
        this.goingAway = true;
        return;
      case FrameType.HEADERS:
        // nothing to do with them, but the shared zlib context must see every header block
        return this.compression.decompress(f.body.subarray(4));
      case FrameType.SYN_REPLY:
        return this.compression.decompress(f.body.subarray(4));
      default:
        // SETTINGS, NOOP, WINDOW_UPDATE (see the header comment), unknown types
        return;
    }
  }

  private async onSynStream(f: ControlFrame): Promise<void> {
    const id = f.body.readUInt32BE(0) & 0x7fffffff;
    const headers = await this.compression.decompress(f.body.subarray(10));
    if (id % 2 === 0 || id <= this.lastStreamId) return this.reply(() => rstStreamFrame(id, RstStatus.PROTOCOL_ERROR));
    this.lastStreamId = id;
    if (this.goingAway) return this.reply(() => rstStreamFrame(id, RstStatus.REFUSED_STREAM));
    if (this.streams.size >= MAX_STREAMS) {
      this.log.debug({ id, open: this.streams.size }, 'SPDY stream refused: too many open streams');
      return this.reply(() => rstStreamFrame(id, RstStatus.REFUSED_STREAM));
    }
    const stream = new SpdyStream(this, id, headers);
    this.streams.set(id, stream);
    stream.once('close', () => this.streams.delete(id));
    // kubelet replies to every stream as soon as it arrives; data may only follow the reply
    const replied = this.reply(async () =>
      controlFrame(FrameType.SYN_REPLY, 0, synReplyBody(id, await this.compression.compress({ ':status': '200', ':version': 'HTTP/1.1' }))),
    );
    if (f.flags & FLAG_FIN) {
      stream.remoteClosed = true;
      stream.push(null);
    }
    if (f.flags & FLAG_UNIDIRECTIONAL) stream.end();
    this.emit('stream', stream);
    await replied;
  }

  private onData(id: number, chunk: Buffer, fin: boolean): void {
    const stream = this.streams.get(id);
    if (!stream || stream.remoteClosed || stream.destroyed) return; // spdystream ignores these too
    if (chunk.length) {
      stream.unacked += chunk.length;
      this.sessionUnacked += chunk.length;
      if (this.sessionUnacked >= DEFAULT_WINDOW / 2) {
        const delta = this.sessionUnacked;
        this.sessionUnacked = 0;
        void this.enqueue(() => windowUpdateFrame(0, delta)).catch(() => undefined);
      }
      if (!stream.push(chunk)) {
        this.congested.add(stream);
        this.updateFlow();
      }
    }
    if (fin) {
      stream.remoteClosed = true;
      stream.push(null);
    }
  }

  /** The stream's reader wants more: acknowledge what it consumed and let the socket flow. */
  streamWantsData(stream: SpdyStream): void {
    if (stream.unacked >= DEFAULT_WINDOW / 2 && !stream.remoteClosed) {
      const delta = stream.unacked;
      stream.unacked = 0;
      void this.enqueue(() => windowUpdateFrame(stream.id, delta)).catch(() => undefined);
    }
    if (this.congested.delete(stream)) this.updateFlow();
  }

  private updateFlow(): void {
    if (this.closed) return;
    if (this.congested.size > 0 || this.decoding > 0) this.socket.pause();
    else this.socket.resume();
  }

  // ---- outbound ----

  /**
   * Frames leave in the order they were queued (header compression is async); the next one
   * waits until the socket drained what this one added.
   */
  private enqueue(make: () => Buffer | Promise<Buffer>): Promise<void> {
    this.queuedOut++;
    const p = this.out
      .then(async () => {
        if (this.closed) throw new Error('SPDY connection closed');
        const frame = await make();
        if (this.closed) throw new Error('SPDY connection closed');
        if (!this.socket.write(frame)) await this.drained();
      })
      .finally(() => this.queuedOut--);
    this.out = p.catch(() => undefined);
    return p;
  }

  /**
   * Queues a reply to a client frame. Returns, for the inbound queue to wait on, a promise that
   * settles once it is written, but only while too many replies are queued already: reading
   * from the client then stops until the socket drains.
   */
  private reply(make: () => Buffer | Promise<Buffer>): Promise<void> | undefined {
    const p = this.enqueue(make).catch(() => undefined);
    return this.queuedOut > MAX_QUEUED_REPLIES ? p : undefined;
  }

  /** Resolves when the socket drained, or closed. */
  private drained(): Promise<void> {
    if (!this.socket.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        this.socket.off('drain', done);
        this.socket.off('close', done);
        resolve();
      };
      this.socket.once('drain', done);
      this.socket.once('close', done);
    });
  }

  sendData(stream: SpdyStream, chunk: Buffer, fin: boolean, cb: (err?: Error | null) => void): void {
    if (this.closed || stream.destroyed) {
      cb(new Error('SPDY stream closed'));
      return;
    }
    const p = this.out.then(() => {
      if (this.closed) throw new Error('SPDY connection closed');
      this.socket.cork();
      for (let off = 0; off < chunk.length || (off === 0 && fin); off += MAX_DATA_FRAME) {
        const piece = chunk.subarray(off, off + MAX_DATA_FRAME);
        const last = off + MAX_DATA_FRAME >= chunk.length;
        this.socket.write(dataFrameHeader(stream.id, fin && last ? FLAG_FIN : 0, piece.length));
        if (piece.length) this.socket.write(piece);
        if (chunk.length === 0) break;
      }
      this.socket.uncork();
    });
    this.out = p.catch(() => undefined);
    p.then(
      () => {
        // back-pressure: the next write of this stream waits until the socket drained
        if (this.socket.writableNeedDrain) {
          const onDrain = () => {
            this.socket.off('close', onClose);
            cb();
          };
          const onClose = () => {
            this.socket.off('drain', onDrain);
            cb(new Error('SPDY connection closed'));
          };
          this.socket.once('drain', onDrain);
          this.socket.once('close', onClose);
        } else cb();
      },
      (err: Error) => cb(err),
    );
  }

  streamDestroyed(stream: SpdyStream): void {
    this.congested.delete(stream);
    this.updateFlow();
    if (this.streams.get(stream.id) === stream) {
      this.streams.delete(stream.id);
      // closed by us before both sides finished: tell the peer
      if (!this.closed && !(stream.remoteClosed && stream.writableFinished)) {
        void this.enqueue(() => rstStreamFrame(stream.id, RstStatus.CANCEL)).catch(() => undefined);
      }
    }
  }

  private fail(err: Error): void {
    this.log.warn({ err }, 'SPDY protocol error; closing the connection');
    if (!this.closed) {
      try {
        this.socket.write(goawayFrame(this.lastStreamId, 1));
      } catch {
        /* socket gone */
      }
    }
    this.destroy();
  }

  private shutdown(): void {
    if (this.closed) return;
    this.closed = true;
    this.compression.close();
    for (const stream of [...this.streams.values()]) stream.destroy();
    this.streams.clear();
    this.congested.clear();
    if (!this.socket.destroyed) this.socket.destroy();
    this.emit('close');
  }
}

/** True when the request asks for a SPDY/3.1 upgrade. */
export function isSpdyUpgrade(req: IncomingMessage): boolean {
  return /^spdy\/3\.1$/i.test(String(req.headers.upgrade ?? '').trim());
}

/** Answers the upgrade with 101 and the negotiated protocol, and starts the session. */
export function acceptSpdy(socket: Duplex, head: Buffer, protocol: string, log: Logger): SpdySession {
  const lines = ['HTTP/1.1 101 Switching Protocols', 'Connection: Upgrade', 'Upgrade: SPDY/3.1'];
  if (protocol) lines.push(`X-Stream-Protocol-Version: ${protocol}`);
  socket.write(lines.join('\r\n') + '\r\n\r\n');
  (socket as Duplex & { setNoDelay?: (b: boolean) => void }).setNoDelay?.(true);
  const session = new SpdySession(socket, log);
  session.feed(head);
  return session;
}
