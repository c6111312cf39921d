// A raw SPDY/3.1 peer for attack tests: does the HTTP upgrade, then writes whatever frames the
// test builds (hostile ones included) and records the control frames the server sends back,
// parsed with the codec's own FrameParser (only framing is shared; nothing here trusts it).
import * as http from 'node:http';
import type { Socket } from 'node:net';
import * as zlib from 'node:zlib';
import { FrameParser, FrameType, SPDY3_DICTIONARY, controlFrame, synStreamBody } from '../../../src/streaming/spdy-codec';

export interface RawSpdy {
  socket: Socket;
  /** control frames received so far: type and the first two 32-bit words of the body */
  frames: Array<{ type: number; a: number; b: number }>;
  /** resolves when the server closed the connection */
  closed: Promise<void>;
}

export function rawSpdyConnect(url: string, protocol: string, opts: { read?: boolean } = {}): Promise<RawSpdy> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: 'POST', headers: { Connection: 'Upgrade', Upgrade: 'SPDY/3.1', 'X-Stream-Protocol-Version': protocol } });
    req.on('error', reject);
    req.on('response', (res) => reject(new Error(`upgrade refused: ${res.statusCode}`)));
    req.on('upgrade', (_res, socket: Socket, head: Buffer) => {
      const frames: RawSpdy['frames'] = [];
      const parser = new FrameParser({
        control: (f) => frames.push({ type: f.type, a: f.body.length >= 4 ? f.body.readUInt32BE(0) : -1, b: f.body.length >= 8 ? f.body.readUInt32BE(4) : -1 }),
        data: () => undefined,
        error: () => socket.destroy(),
      });
      socket.on('error', () => undefined);
      const closed = new Promise<void>((r) => socket.once('close', () => r()));
      if (opts.read === false) socket.pause();
      else socket.on('data', (c: Buffer) => parser.push(c));
      if (head.length) parser.push(head);
      resolve({ socket, frames, closed });
    });
    req.end();
  });
}

/** An uncompressed name/value block's prefix for one header whose value is `valueLength` bytes. */
function oneHeaderPrefix(name: string, valueLength: number): Buffer {
  const n = Buffer.from(name);
  const b = Buffer.alloc(12 + n.length);
  b.writeUInt32BE(1, 0);
  b.writeUInt32BE(n.length, 4);
  n.copy(b, 8);
  b.writeUInt32BE(valueLength, 8 + n.length);
  return b;
}

/**
 * A SYN_STREAM whose one header value is `inflatedBytes` of NULs once inflated: the compressed
 * frame is ~1/1000 of that. Built by streaming zeros through deflate, never holding them.
 */
export async function synStreamBomb(streamId: number, inflatedBytes: number): Promise<Buffer> {
  const d = zlib.createDeflate({ dictionary: SPDY3_DICTIONARY, level: 9 });
  const out: Buffer[] = [];
  d.on('data', (c: Buffer) => out.push(c));
  const write = (b: Buffer) => new Promise<void>((r) => (d.write(b) ? r() : d.once('drain', () => r())));
  await write(oneHeaderPrefix('streamtype', inflatedBytes));
  const zeros = Buffer.alloc(1 << 20);
  for (let left = inflatedBytes; left > 0; left -= zeros.length) await write(left >= zeros.length ? zeros : zeros.subarray(0, left));
  await new Promise<void>((r) => d.flush(zlib.constants.Z_SYNC_FLUSH, () => r()));
  d.close();
  return controlFrame(FrameType.SYN_STREAM, 0, synStreamBody(streamId, 0, 0, Buffer.concat(out)));
}

/** A SYN_STREAM with the given headers, compressed with a fresh context (first block of a connection). */
export function synStream(streamId: number, headers: Record<string, string>, deflate: zlib.Deflate): Promise<Buffer> {
  const parts: Buffer[] = [];
  const u32 = (v: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(v);
    return b;
  };
  parts.push(u32(Object.keys(headers).length));
  for (const [k, v] of Object.entries(headers)) parts.push(u32(k.length), Buffer.from(k), u32(Buffer.byteLength(v)), Buffer.from(v));
  return new Promise((resolve) => {
    const out: Buffer[] = [];
    const onData = (c: Buffer) => out.push(c);
    deflate.on('data', onData);
    deflate.write(Buffer.concat(parts));
    deflate.flush(zlib.constants.Z_SYNC_FLUSH, () => {
      deflate.off('data', onData);
      resolve(controlFrame(FrameType.SYN_STREAM, 0, synStreamBody(streamId, 0, 0, Buffer.concat(out))));
    });
  });
}

export const newDeflate = () => zlib.createDeflate({ dictionary: SPDY3_DICTIONARY });
