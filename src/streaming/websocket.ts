// Kubernetes' channel protocol over WebSocket (k8s.io/apimachinery wsstream): every message
// starts with a channel number (a byte in the binary protocols, an ASCII digit in the base64
// ones, whose payload is then base64), and v5.channel.k8s.io adds channel 255 = "close the
// channel named in the next byte" (how a client ends stdin). Each channel is a Node Duplex:
// its writes wait for ws.send's callback (the socket took the frame), and a reader that falls
// behind pauses the WebSocket, so neither direction buffers without bound.
import { EventEmitter } from 'node:events';
import { Duplex } from 'node:stream';
import type { WebSocket } from 'ws';
import type { Logger } from '../util/log';

export const CLOSE_CHANNEL = 255;

export interface ChannelOptions {
  /** text frames, channel as an ASCII digit, base64 payload */
  base64: boolean;
  /** v5.channel.k8s.io: channel 255 closes a channel */
  supportsClose: boolean;
  /** channels the client may write to; data for other channels is dropped */
  readable: number[];
}

export class WsChannel extends Duplex {
  /** no more input: the client closed the channel, or the session ended it */
  inputEnded = false;

  constructor(
    private readonly conn: WsChannelConnection,
    readonly index: number,
  ) {
    super({ allowHalfOpen: true });
    // A write after the client went away fails the channel; whoever uses it sees that through
    // its own listeners (pipeline, finished, 'close'). Without one here such an error would be
    // an uncaught exception: a client could end the daemon by disconnecting at the right time.
    this.on('error', () => undefined);
  }

  override _read(): void {
    this.conn.channelWantsData(this);
  }

  /** Ends the channel's input once (pushing after that would be an uncaught stream error). */
  endInput(): void {
    if (this.inputEnded) return;
    this.inputEnded = true;
    if (!this.destroyed) this.push(null);
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.conn.send(this.index, chunk, cb);
  }

  override _final(cb: (err?: Error | null) => void): void {
    cb();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.conn.channelDestroyed(this);
    cb(err);
  }
}

export class WsChannelConnection extends EventEmitter {
  private readonly channels = new Map<number, WsChannel>();
  private readonly congested = new Set<WsChannel>();
  private readonly readable: Set<number>;
  private closed = false;

  constructor(
    private readonly ws: WebSocket,
    private readonly opts: ChannelOptions,
    private readonly log: Logger,
  ) {
    super();
    this.readable = new Set(opts.readable);
    ws.on('message', (data: Buffer, isBinary: boolean) => this.onMessage(data, isBinary));
    ws.on('close', () => this.shutdown());
    ws.on('error', (err) => {
      this.log.debug({ err }, 'websocket error');
      this.shutdown();
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  channel(index: number): WsChannel {
    let ch = this.channels.get(index);
    if (!ch) {
      ch = new WsChannel(this, index);
      this.channels.set(index, ch);
      if (!this.readable.has(index)) ch.endInput();
    }
    return ch;
  }

  /** Writes one message on a channel (a raw frame, e.g. the initial empty one or a port prefix). */
  send(index: number, payload: Buffer, cb?: (err?: Error | null) => void): void {
    if (this.closed || this.ws.readyState !== this.ws.OPEN) {
      cb?.(new Error('websocket closed'));
      return;
    }
    if (this.opts.base64) {
      this.ws.send(String.fromCharCode(48 + index) + payload.toString('base64'), { binary: false }, cb);
    } else {
      const frame = Buffer.allocUnsafe(payload.length + 1);
      frame[0] = index;
      payload.copy(frame, 1);
      this.ws.send(frame, { binary: true }, cb);
    }
  }

  /** Closes the WebSocket normally once everything queued has been sent. */
  close(code = 1000, reason = ''): void {
    if (this.closed) return;
    try {
      this.ws.close(code, reason);
    } catch {
      this.ws.terminate();
    }
    setTimeout(() => this.ws.terminate(), 10_000).unref();
  }

  private onMessage(data: Buffer, isBinary: boolean): void {
    let index: number;
    let payload: Buffer;
    if (this.opts.base64 && !isBinary) {
      const text = data.toString('latin1');
      if (!text.length) return;
      index = text.charCodeAt(0) - 48;
      payload = Buffer.from(text.slice(1), 'base64');
    } else {
      if (!data.length) return;
      index = data[0];
      payload = data.subarray(1);
    }
    if (index === CLOSE_CHANNEL && this.opts.supportsClose) {
      if (payload.length >= 1) {
        const ch = this.channels.get(payload[0]);
        if (ch && this.readable.has(ch.index)) ch.endInput();
        this.readable.delete(payload[0]);
      }
      return;
    }
    if (!this.readable.has(index)) return;
    const ch = this.channel(index);
    // input after the channel's end (the session may end a channel at any time) is dropped
    if (payload.length && !ch.destroyed && !ch.inputEnded && !ch.push(payload)) {
      this.congested.add(ch);
      this.ws.pause();
    }
  }

  channelWantsData(ch: WsChannel): void {
    if (this.congested.delete(ch) && this.congested.size === 0 && !this.closed) this.ws.resume();
  }

  channelDestroyed(ch: WsChannel): void {
    this.channelWantsData(ch);
  }

  private shutdown(): void {
    if (this.closed) return;
    this.closed = true;
    for (const ch of this.channels.values()) ch.destroy();
    this.congested.clear();
    this.emit('close');
  }
}
