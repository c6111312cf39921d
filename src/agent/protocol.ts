// Frame codec for the host <-> guest agent protocol (guest/PROTOCOL.md). The guest is untrusted:
// the decoder bounds every frame and throws ProtocolError on anything malformed, and the caller
// then drops the connection (failing that pod only).
export const PROTOCOL_VERSION = 1;

export const MAX_PAYLOAD = 1024 * 1024;
export const MAX_DATA = 65536;
export const INITIAL_WINDOW = 262144;
const HEADER = 9; // length u32 + kind u8 + id u32

export enum Kind {
  Req = 1,
  Resp = 2,
  Event = 3,
  Data = 4,
  Credit = 5,
  Eof = 6,
  Reset = 7,
}

export interface Frame {
  kind: Kind;
  id: number;
  payload: Buffer;
}

export class ProtocolError extends Error {
  constructor(message: string) {
    super(`agent protocol: ${message}`);
    this.name = 'ProtocolError';
  }
}

export function encodeFrame(kind: Kind, id: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  if (payload.length > MAX_PAYLOAD) throw new ProtocolError(`payload of ${payload.length} bytes exceeds ${MAX_PAYLOAD}`);
  const head = Buffer.allocUnsafe(HEADER);
  head.writeUInt32BE(5 + payload.length, 0);
  head.writeUInt8(kind, 4);
  head.writeUInt32BE(id >>> 0, 5);
  return payload.length ? Buffer.concat([head, payload]) : head;
}

export function encodeJson(kind: Kind, id: number, value: unknown): Buffer {
  return encodeFrame(kind, id, Buffer.from(JSON.stringify(value)));
}

export function encodeCredit(id: number, bytes: number): Buffer {
  const p = Buffer.allocUnsafe(4);
  p.writeUInt32BE(bytes >>> 0, 0);
  return encodeFrame(Kind.Credit, id, p);
}

/** Incremental decoder: push() chunks from the socket, get whole validated frames back. */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;

  push(chunk: Buffer): Frame[] {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const frames: Frame[] = [];
    for (;;) {
      if (this.buffered < 4) break;
      const head = this.peek(4);
      const length = head.readUInt32BE(0);
      if (length < 5 || length > 5 + MAX_PAYLOAD) throw new ProtocolError(`bad frame length ${length}`);
      if (this.buffered < 4 + length) break;
      const raw = this.take(4 + length);
      frames.push(validate({ kind: raw.readUInt8(4), id: raw.readUInt32BE(5), payload: raw.subarray(HEADER) }));
    }
    return frames;
  }

  private peek(n: number): Buffer {
    if (this.chunks[0].length < n) this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0].subarray(0, n);
  }

  private take(n: number): Buffer {
    const all = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length ? [rest] : [];
    this.buffered = rest.length;
    return out;
  }
}

function validate(f: Frame): Frame {
  switch (f.kind) {
    case Kind.Resp:
    case Kind.Event:
      if (f.kind === Kind.Event && f.id !== 0) throw new ProtocolError('event with non-zero id');
      return f;
    case Kind.Data:
      if (f.id === 0 || f.payload.length === 0 || f.payload.length > MAX_DATA) throw new ProtocolError(`bad data frame (stream ${f.id}, ${f.payload.length} bytes)`);
      return f;
    case Kind.Credit:
      if (f.id === 0 || f.payload.length !== 4) throw new ProtocolError('bad credit frame');
      return f;
    case Kind.Eof:
    case Kind.Reset:
      if (f.id === 0 || f.payload.length !== 0) throw new ProtocolError('bad eof/reset frame');
      return f;
    case Kind.Req:
      throw new ProtocolError('the guest may not send requests');
    default:
      throw new ProtocolError(`unknown frame kind ${f.kind}`);
  }
}

/** Parses a JSON payload into an object, or throws ProtocolError. */
export function parseJsonObject(payload: Buffer): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(payload.toString('utf8'));
  } catch {
    throw new ProtocolError('payload is not JSON');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ProtocolError('payload is not a JSON object');
  return v as Record<string, unknown>;
}
