// The hand-written SPDY/3 codec against spdy-transport's: same dictionary, header blocks that
// round-trip through the shared zlib contexts, and a parser that copes with any split.
import { FLAG_FIN, FrameParser, HeaderCompression, SPDY3_DICTIONARY, dataFrameHeader, pingFrame } from '../../src/streaming/spdy-codec';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const theirs = require('spdy-transport/lib/spdy-transport/protocol/spdy/dictionary.js');

test('SPDY/3 dictionary matches spdy-transport byte for byte', () => {
  expect(SPDY3_DICTIONARY.equals(theirs[3])).toBe(true);
});

test('header blocks round-trip across several frames of one context', async () => {
  const a = new HeaderCompression();
  const b = new HeaderCompression();
  const blocks: Array<Record<string, string>> = [{ streamType: 'stdout' }, { streamtype: 'data', port: '80', requestid: '7' }, { streamtype: 'stdout' }];
  for (const h of blocks) {
    const block = await a.compress(h);
    const lower = Object.fromEntries(Object.entries(h).map(([k, v]) => [k.toLowerCase(), v]));
    expect(await b.decompress(block)).toEqual(lower);
  }
  a.close();
  b.close();
});

test('the parser handles frames split at every byte', () => {
  const payload = Buffer.from('hello world');
  const wire = Buffer.concat([pingFrame(1), dataFrameHeader(3, FLAG_FIN, payload.length), payload, pingFrame(3)]);
  const events: string[] = [];
  const p = new FrameParser({
    control: (f) => events.push(`control ${f.type} ${f.body.readUInt32BE(0)}`),
    data: (id, chunk, fin) => events.push(`data ${id} ${chunk.toString()} ${fin}`),
    error: (e) => events.push(`error ${e.message}`),
  });
  for (const byte of wire) p.push(Buffer.from([byte]));
  expect(events[0]).toBe('control 6 1');
  expect(events.at(-1)).toBe('control 6 3');
  expect(events.filter((e) => e.startsWith('data')).map((e) => e.split(' ').slice(2, -1).join(' ')).join('')).toBe('hello world');
  expect(events.filter((e) => e.startsWith('data')).at(-1)).toMatch(/ true$/);
});
