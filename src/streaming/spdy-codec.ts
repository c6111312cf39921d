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
  head.writeUInt32BE(((flags & 0xff) << 24) | body.length, 4);
  return Buffer.concat([head, body]);
}

export function dataFrameHeader(streamId: number, flags: number, length: number): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(streamId & 0x7fffffff, 0);
  head.writeUInt32BE(((flags & 0xff) << 24) | length, 4);
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

/** Parses an uncompressed name/value block; repeated values (NUL-separated) keep the first. */
export function decodeHeaderBlock(block: Buffer): Headers {
  const out: Headers = {};
  let off = 0;
  const need = (n: number) => {
    if (off + n > block.length) throw new Error('SPDY header block truncated');
  };
  need(4);
  const count = block.readUInt32BE(off);
  off += 4;
  for (let i = 0; i < count; i++) {
    need(4);
    const nl = block.readUInt32BE(off);
    off += 4;
    need(nl);
    const name = block.toString('utf8', off, off + nl).toLowerCase();
    off += nl;
    need(4);
    const vl = block.readUInt32BE(off);
    off += 4;
    need(vl);
    const value = block.toString('utf8', off, off + vl);
    off += vl;
    if (!(name in out)) out[name] = value.split('\0')[0];
  }
  return out;
}

// ---- header compression: one zlib stream per direction for the whole connection ----

function runZlib(z: zlib.Deflate | zlib.Inflate, input: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const onData = (c: Buffer) => chunks.push(c);
    const onError = (err: Error) => {
      z.off('data', onData);
      reject(err);
    };
    z.on('data', onData);
    z.once('error', onError);
    z.write(input);
    z.flush(zlib.constants.Z_SYNC_FLUSH, () => {
      z.off('data', onData);
      z.off('error', onError);
      resolve(Buffer.concat(chunks));
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
    const p = this.inflating.then(async () => decodeHeaderBlock(await runZlib(this.inflate, block)));
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
 * for the whole frame, so a large frame never has to sit in memory at once.
 */
export class FrameParser {
  private pending: Buffer[] = [];
  private pendingLen = 0;
  private dataLeft = 0;
  private dataStream = 0;
  private dataFin = false;
  private dead = false;

  constructor(private readonly on: ParserEvents) {}

  push(chunk: Buffer): void {
    if (this.dead) return;
    this.pending.push(chunk);
    this.pendingLen += chunk.length;
    try {
      this.drain();
    } catch (err) {
      this.dead = true;
      this.on.error(err as Error);
    }
  }

  private take(n: number): Buffer {
    const all = this.pending.length === 1 ? this.pending[0] : Buffer.concat(this.pending, this.pendingLen);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.pending = rest.length ? [rest] : [];
    this.pendingLen = rest.length;
    return out;
  }

  private drain(): void {
    for (;;) {
      if (this.dataLeft > 0) {
        if (this.pendingLen === 0) return;
        const n = Math.min(this.dataLeft, this.pendingLen);
        const chunk = this.take(n);
        this.dataLeft -= n;
        this.on.data(this.dataStream, chunk, this.dataLeft === 0 && this.dataFin);
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
        if (this.pendingLen < length) {
          // put the header back and wait for the rest of the frame
          this.pending.unshift(head);
          this.pendingLen += 8;
          return;
        }
        this.on.control({ control: true, type: first & 0xffff, flags, body: this.take(length) });
      } else {
        this.dataStream = first & 0x7fffffff;
        this.dataFin = (flags & FLAG_FIN) !== 0;
        if (length === 0) this.on.data(this.dataStream, Buffer.alloc(0), this.dataFin);
        else this.dataLeft = length;
      }
    }
  }
}
