// SPDY/3.1 wire format: frame encoding, an incremental frame parser, and the zlib header-block
// compression with the SPDY/3 dictionary. Only what Kubernetes' httpstream peers
// (moby/spdystream) send and expect is modelled; see spdy.ts for why this is not spdy-transport.
import * as zlib from 'node:zlib';

export const SPDY_VERSION = 3;

export const FrameType = {
  SYN_STREAM: 1,
  SYN_REPLY: 2,
  RST_STREAM: 3,
  SETTINGS: 4,
  NOOP: 5,
  PING: 6,
  GOAWAY: 7,
  HEADERS: 8,
  WINDOW_UPDATE: 9,
} as const;

export const FLAG_FIN = 0x01;
export const FLAG_UNIDIRECTIONAL = 0x02;

export const RstStatus = {
  PROTOCOL_ERROR: 1,
  INVALID_STREAM: 2,
  REFUSED_STREAM: 3,
  CANCEL: 5,
  INTERNAL_ERROR: 6,
  FLOW_CONTROL_ERROR: 7,
  STREAM_IN_USE: 8,
  STREAM_ALREADY_CLOSED: 9,
} as const;

export const DEFAULT_WINDOW = 64 * 1024;
/** Largest control frame accepted (header blocks of a few streams are tiny). */
export const MAX_CONTROL_FRAME = 1 << 20;

/**
 * Bounds on one received header block, after inflation. Kubernetes' clients send 1–4 short
 * headers per stream (streamType, port, requestID); these leave room for any real peer while a
 * compressed block can never make the daemon hold more than MAX_HEADER_BLOCK bytes.
 */
export const HeaderLimits = {
  /** inflated size of one header block */
  MAX_HEADER_BLOCK: 256 * 1024,
  /** name/value pairs in one block */
  MAX_HEADERS: 128,
  /** one header name */
  MAX_NAME: 256,
  /** one header value (all of its NUL-separated values together) */
  MAX_VALUE: 16 * 1024,
} as const;

export class HeaderBlockError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'HeaderBlockError';
  }
}

// The SPDY/3 header compression dictionary (draft-mbelshe-httpbis-spdy-00, section 2.6.10.1):
// length-prefixed header words, then a run of common values.
const DICT_WORDS = (
  'options head post put delete trace accept accept-charset accept-encoding accept-language ' +
  'accept-ranges age allow authorization cache-control connection content-base content-encoding ' +
  'content-language content-length content-location content-md5 content-range content-type date ' +
  'etag expect expires from host if-match if-modified-since if-none-match if-range ' +
  'if-unmodified-since last-modified location max-forwards pragma proxy-authenticate ' +
  'proxy-authorization range referer retry-after server te trailer transfer-encoding upgrade ' +
  'user-agent vary via warning www-authenticate method get status'
)
  .split(' ')
  .concat(['200 OK', 'version', 'HTTP/1.1', 'url', 'public', 'set-cookie', 'keep-alive', 'origin']);
const DICT_TAIL =
  '100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505' +
  '203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request' +
  '401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented' +
  '503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, ' +
  'Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,application/xml,' +
  'application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdch' +
  'charset=utf-8charset=iso-8859-1,utf-,*,enq=0.';

export const SPDY3_DICTIONARY: Buffer = Buffer.concat([
  ...DICT_WORDS.map((w) => {
    const b = Buffer.alloc(4 + w.length);
    b.writeUInt32BE(w.length, 0);
    b.write(w, 4, 'latin1');
    return b;
  }),
  Buffer.from(DICT_TAIL, 'latin1'),
]);

export type Headers = Record<string, string>;

export interface ControlFrame {
  control: true;
  type: number;
  flags: number;
  body: Buffer;
}

// ---- encoding ----

export function controlFrame(type: number, flags: number, body: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt16BE(0x8000 | SPDY_VERSION, 0);
  head.writeUInt16BE(type, 2);
  head.writeUInt32BE((((flags & 0xff) << 24) | body.length) >>> 0, 4);
  return Buffer.concat([head, body]);
}

export function dataFrameHeader(streamId: number, flags: number, length: number): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(streamId & 0x7fffffff, 0);
  head.writeUInt32BE((((flags & 0xff) << 24) | length) >>> 0, 4);
  return head;
}

function u32s(...values: number[]): Buffer {
  const b = Buffer.alloc(4 * values.length);
  values.forEach((v, i) => b.writeUInt32BE(v >>> 0, 4 * i));
  return b;
}

export const synStreamBody = (id: number, associated: number, priority: number, block: Buffer) =>
  Buffer.concat([u32s(id & 0x7fffffff, associated & 0x7fffffff), Buffer.from([(priority & 7) << 5, 0]), block]);
export const synReplyBody = (id: number, block: Buffer) => Buffer.concat([u32s(id & 0x7fffffff), block]);
export const rstStreamFrame = (id: number, status: number) => controlFrame(FrameType.RST_STREAM, 0, u32s(id & 0x7fffffff, status));
export const pingFrame = (id: number) => controlFrame(FrameType.PING, 0, u32s(id));
export const goawayFrame = (lastGoodId: number, status = 0) => controlFrame(FrameType.GOAWAY, 0, u32s(lastGoodId & 0x7fffffff, status));
export const windowUpdateFrame = (id: number, delta: number) =>
  controlFrame(FrameType.WINDOW_UPDATE, 0, u32s(id & 0x7fffffff, delta & 0x7fffffff));

/** Uncompressed SPDY/3 name/value block; names lowercased as the protocol requires. */
export function encodeHeaderBlock(headers: Headers): Buffer {
  const parts: Buffer[] = [u32s(Object.keys(headers).length)];
  for (const [name, value] of Object.entries(headers)) {
    const n = Buffer.from(name.toLowerCase(), 'utf8');
    const v = Buffer.from(value, 'utf8');
    parts.push(u32s(n.length), n, u32s(v.length), v);
  }
  return Buffer.concat(parts);
}


/**
 * Parses an uncompressed name/value block; repeated values (NUL-separated) keep the first.
 * Counts and lengths are checked against HeaderLimits before anything is decoded, and only the
 * kept part of a value ever becomes a string.
 */
export function decodeHeaderBlock(block: Buffer): Headers {
  const out: Headers = Object.create(null);
  let off = 0;
  const need = (n: number) => {
    if (off + n > block.length) throw new HeaderBlockError('SPDY header block truncated');
  };
  need(4);
  const count = block.readUInt32BE(off);
  off += 4;
  if (count > HeaderLimits.MAX_HEADERS) throw new HeaderBlockError(`SPDY header block has ${count} headers (at most ${HeaderLimits.MAX_HEADERS})`);
  for (let i = 0; i < count; i++) {
    need(4);
    const nl = block.readUInt32BE(off);
    off += 4;
    if (nl > HeaderLimits.MAX_NAME) throw new HeaderBlockError(`SPDY header name of ${nl} bytes (at most ${HeaderLimits.MAX_NAME})`);
    need(nl);
    const name = block.toString('utf8', off, off + nl).toLowerCase();
    off += nl;
    need(4);
    const vl = block.readUInt32BE(off);
    off += 4;
    if (vl > HeaderLimits.MAX_VALUE) throw new HeaderBlockError(`SPDY header value of ${vl} bytes (at most ${HeaderLimits.MAX_VALUE})`);
    need(vl);
    if (!(name in out)) {
      const nul = block.indexOf(0, off);
      out[name] = block.toString('utf8', off, nul >= 0 && nul < off + vl ? nul : off + vl);
    }
    off += vl;
  }
  return { ...out };
}

// ---- header compression: one zlib stream per direction for the whole connection ----

/**
 * Writes `input` into the connection's zlib stream and collects what one sync flush yields.
 * With `maxOutput`, the stream is destroyed (and the promise rejected) as soon as the output
 * passes that size, so a small deflated block cannot inflate into memory without bound.
 */
function runZlib(z: zlib.Deflate | zlib.Inflate, input: Buffer, maxOutput = Infinity): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let failed = false;
    const onData = (c: Buffer) => {
      if (failed) return;
      size += c.length;
      if (size > maxOutput) {
        failed = true;
        chunks.length = 0;
        z.off('data', onData);
        z.destroy();
        reject(new HeaderBlockError(`SPDY header block inflates past ${maxOutput} bytes`));
        return;
      }
      chunks.push(c);
    };
    const onError = (err: Error) => {
      z.off('data', onData);
      if (!failed) reject(err);
      failed = true;
    };
    z.on('data', onData);
    z.once('error', onError);
    z.write(input);
    z.flush(zlib.constants.Z_SYNC_FLUSH, () => {
      z.off('data', onData);
      z.off('error', onError);
      if (!failed) resolve(Buffer.concat(chunks));
    });
  });
}

export class HeaderCompression {
  private readonly deflate = zlib.createDeflate({ dictionary: SPDY3_DICTIONARY });
  private readonly inflate = zlib.createInflate({ dictionary: SPDY3_DICTIONARY });
  private deflating: Promise<unknown> = Promise.resolve();
  private inflating: Promise<unknown> = Promise.resolve();

  /** Compresses in call order (the zlib context is shared by every header block). */
  compress(headers: Headers): Promise<Buffer> {
    const p = this.deflating.then(() => runZlib(this.deflate, encodeHeaderBlock(headers)));
    this.deflating = p.catch(() => undefined);
    return p;
  }

  decompress(block: Buffer): Promise<Headers> {
    const p = this.inflating.then(async () => decodeHeaderBlock(await runZlib(this.inflate, block, HeaderLimits.MAX_HEADER_BLOCK)));
    this.inflating = p.catch(() => undefined);
    return p;
  }

  close(): void {
    this.deflate.close();
    this.inflate.close();
  }
}

// ---- incremental parser ----

export interface ParserEvents {
  /** a whole control frame */
  control(frame: ControlFrame): void;
  /** part of a DATA frame's payload, handed on as it arrives (fin on the last part) */
  data(streamId: number, chunk: Buffer, fin: boolean): void;
  error(err: Error): void;
}

/**
 * Splits the byte stream into frames. DATA payloads are passed on in pieces without waiting
 * for the whole frame, so a large frame never has to sit in memory at once. Incoming chunks
 * are queued as they are and only the bytes a frame needs are copied out, once, so a control
 * frame trickled in byte by byte costs linear time.
 */
export class FrameParser {
  private pending: Buffer[] = [];
  /** index of the first unconsumed chunk in pending */
  private head = 0;
  private pendingLen = 0;
  private dataLeft = 0;
  private dataStream = 0;
  private dataFin = false;
  /** a control frame whose 8-byte header was read: waiting for its body */
  private control?: { type: number; flags: number; length: number };
  private dead = false;

  constructor(private readonly on: ParserEvents) {}

  push(chunk: Buffer): void {
    if (this.dead || chunk.length === 0) return;
    this.pending.push(chunk);
    this.pendingLen += chunk.length;
    try {
      this.drain();
    } catch (err) {
      this.dead = true;
      this.pending = [];
      this.head = 0;
      this.pendingLen = 0;
      this.on.error(err as Error);
    }
  }

  /** Removes the first n (≤ pendingLen) bytes; copies only when they span chunks. */
  private take(n: number): Buffer {
    this.pendingLen -= n;
    const first = this.pending[this.head];
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.head++;
      else this.pending[this.head] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let got = 0;
      while (got < n) {
        const c = this.pending[this.head];
        const k = Math.min(c.length, n - got);
        c.copy(out, got, 0, k);
        got += k;
        if (k === c.length) this.head++;
        else this.pending[this.head] = c.subarray(k);
      }
    }
    // drop consumed chunks now and then (not per take: Array.shift is linear)
    if (this.head === this.pending.length) {
      this.pending = [];
      this.head = 0;
    } else if (this.head > 1024) {
      this.pending = this.pending.slice(this.head);
      this.head = 0;
    }
    return out;
  }

  private drain(): void {
    for (;;) {
      if (this.dataLeft > 0) {
        if (this.pendingLen === 0) return;
        // hand on what is there, chunk by chunk, without joining chunks
        const n = Math.min(this.dataLeft, this.pending[this.head].length);
        const chunk = this.take(n);
        this.dataLeft -= n;
        this.on.data(this.dataStream, chunk, this.dataLeft === 0 && this.dataFin);
        continue;
      }
      if (this.control) {
        if (this.pendingLen < this.control.length) return; // wait for the rest of the frame
        const { type, flags, length } = this.control;
        this.control = undefined;
        this.on.control({ control: true, type, flags, body: length ? this.take(length) : Buffer.alloc(0) });
        continue;
      }
      if (this.pendingLen < 8) return;
      const head = this.take(8);
      const first = head.readUInt32BE(0);
      const flags = head[4];
      const length = head.readUIntBE(5, 3);
      if (first & 0x80000000) {
        const version = (first >>> 16) & 0x7fff;
        if (version !== SPDY_VERSION) throw new Error(`unsupported SPDY version ${version}`);
        if (length > MAX_CONTROL_FRAME) throw new Error(`SPDY control frame too large (${length} bytes)`);
        this.control = { type: first & 0xffff, flags, length };
      } else {
        this.dataStream = first & 0x7fffffff;
        this.dataFin = (flags & FLAG_FIN) !== 0;
        if (length === 0) this.on.data(this.dataStream, Buffer.alloc(0), this.dataFin);
        else this.dataLeft = length;
      }
    }
  }
}
