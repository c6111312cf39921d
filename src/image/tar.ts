// A push-mode tar reader for image layers: ustar, GNU (long names, base-256 numbers) and PAX
// (path, linkpath, size, uid, gid, mtime, SCHILY.xattr.*, LIBARCHIVE.xattr.*).
//
// Written here rather than taken from tar-stream because image layers need the PAX record
// values as raw bytes: tar-stream (and node-tar) decode every record as UTF-8, which destroys
// binary xattr values such as security.capability. It is also synchronous and callback-driven,
// so a layer streams through it without a promise or stream object per entry.
//
// Names, link targets and xattr names are byte strings held as latin1 JS strings (one char per
// byte): nothing is lost for non-UTF-8 names and comparing them compares bytes.
// The reader refuses what it cannot represent faithfully (sparse files, multi-volume
// archives, bad checksums, truncated archives) and bounds what it buffers: each metadata record,
// all records waiting for their entry together (a run of `x`/`L`/`K` records before one entry),
// all global (`g`) records of the archive together, and each xattr value and the xattr count
// as records are parsed, so a layer's metadata costs at most a few MiB whatever it claims.

export class TarFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TarFormatError';
  }
}

export type TarEntryType = 'file' | 'link' | 'symlink' | 'char' | 'block' | 'dir' | 'fifo' | 'other';

export interface TarHeader {
  /** Entry name (latin1 byte string), as in the archive. */
  name: string;
  type: TarEntryType;
  /** The raw typeflag character ('0', '5', 'x' …). */
  typeflag: string;
  /** Permission bits including setuid/setgid/sticky (mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  /** Bytes of data that follow (regular files; 0 for the others). */
  size: number;
  mtime: number;
  mtimeNsec: number;
  linkname: string;
  devmajor: number;
  devminor: number;
  /** Extended attributes from PAX records (name → raw value); null when there are none. */
  xattrs: Map<string, Buffer> | null;
}

export interface TarHandler {
  /** An entry. For type 'file', data() calls follow with exactly `size` bytes, then end(). */
  entry(h: TarHeader): void;
  data(chunk: Buffer): void;
  end(): void;
}

export interface TarLimits {
  /** Largest PAX or GNU long-name record buffered. */
  maxMetaBytes: number;
  /** All `x`, `L` and `K` records before one entry, together (default: maxMetaBytes). */
  maxPendingMetaBytes?: number;
  /** All global (`g`) PAX records of the archive, together (default: maxMetaBytes). */
  maxGlobalMetaBytes?: number;
  /** Largest xattr value (default 64 KiB, Linux's XATTR_SIZE_MAX). */
  maxXattrValue?: number;
  /** Most xattrs one record set may carry (default 128). */
  maxXattrs?: number;
}

export const DEFAULT_TAR_LIMITS: Required<TarLimits> = {
  maxMetaBytes: 1 << 20,
  maxPendingMetaBytes: 1 << 20,
  maxGlobalMetaBytes: 1 << 20,
  maxXattrValue: 65536,
  maxXattrs: 128,
};

const BLOCK = 512;
const SCHILY = 'SCHILY.xattr.';
const LIBARCHIVE = 'LIBARCHIVE.xattr.';

const enum State {
  Header,
  Meta,
  Data,
  Skip,
  End,
}

/** Parses an octal or base-256 numeric field; NaN when malformed, Infinity when unrepresentable. */
export function parseNumeric(b: Buffer, off: number, len: number): number {
  const first = b[off];
  if (first & 0x80) {
    // GNU base-256: big-endian two's complement; only non-negative values are meaningful here.
    if (first === 0xff) return NaN;
    let v = first & 0x7f;
    for (let i = 1; i < len; i++) {
      v = v * 256 + b[off + i];
      if (v > Number.MAX_SAFE_INTEGER) return Infinity;
    }
    return v;
  }
  let i = off;
  const end = off + len;
  while (i < end && (b[i] === 0x20 || b[i] === 0)) i++; // leading spaces (and empty fields)
  let v = 0;
  let digits = 0;
  for (; i < end; i++) {
    const c = b[i];
    if (c === 0 || c === 0x20) break;
    if (c < 0x30 || c > 0x37) return NaN;
    v = v * 8 + (c - 0x30);
    digits++;
  }
  return digits === 0 ? 0 : v;
}

function cstring(b: Buffer, off: number, len: number): string {
  let end = off;
  const max = off + len;
  while (end < max && b[end] !== 0) end++;
  return b.toString('latin1', off, end);
}

function isZeroBlock(b: Buffer, off: number): boolean {
  for (let i = off; i < off + BLOCK; i++) if (b[i] !== 0) return false;
  return true;
}

function checksumOk(b: Buffer, off: number): boolean {
  const want = parseNumeric(b, off + 148, 8);
  if (!Number.isFinite(want)) return false;
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const c = i >= 148 && i < 156 ? 0x20 : b[off + i];
    unsigned += c;
    signed += c > 127 ? c - 256 : c;
  }
  return want === unsigned || want === signed;
}

/** Decodes libarchive's %XX-escaped xattr names. */
function unescapeName(s: string): string {
  return s.replace(/%([0-9A-Fa-f]{2})/g, (_, h) => String.fromCharCode(parseInt(h, 16)));
}

interface Pending {
  path?: string;
  linkpath?: string;
  size?: number;
  uid?: number;
  gid?: number;
  mtime?: [number, number];
  xattrs?: Map<string, Buffer>;
  sparse?: boolean;
}

/**
 * Parses PAX records ("<len> <key>=<value>\n"), values kept as bytes. xattr values and counts
 * are checked as each record is read (before anything is copied).
 */
export function parsePax(buf: Buffer, into: Pending, limits: Pick<Required<TarLimits>, 'maxXattrValue' | 'maxXattrs'> = DEFAULT_TAR_LIMITS): void {
  const setXattr = (name: string, value: Buffer) => {
    if (value.length > limits.maxXattrValue) throw new TarFormatError(`PAX xattr ${JSON.stringify(name.slice(0, 64))} value of ${value.length} bytes (at most ${limits.maxXattrValue})`);
    const x = (into.xattrs ??= new Map());
    if (!x.has(name) && x.size >= limits.maxXattrs) throw new TarFormatError(`more than ${limits.maxXattrs} PAX xattrs for one entry`);
    x.set(name, Buffer.from(value));
  };
  let off = 0;
  while (off < buf.length) {
    let sp = off;
    while (sp < buf.length && buf[sp] !== 0x20) sp++;
    if (sp >= buf.length) {
      if (buf.subarray(off).every((c) => c === 0)) return; // NUL padding after the records
      throw new TarFormatError('malformed PAX record');
    }
    const len = Number(buf.toString('latin1', off, sp));
    if (!Number.isSafeInteger(len) || len <= sp - off + 1 || off + len > buf.length || buf[off + len - 1] !== 0x0a)
      throw new TarFormatError('malformed PAX record length');
    const rec = buf.subarray(sp + 1, off + len - 1);
    const eq = rec.indexOf(0x3d);
    if (eq <= 0) throw new TarFormatError('malformed PAX record');
    const key = rec.toString('latin1', 0, eq);
    const value = rec.subarray(eq + 1);
    off += len;
    switch (key) {
      case 'path':
        into.path = value.toString('latin1');
        break;
      case 'linkpath':
        into.linkpath = value.toString('latin1');
        break;
      case 'size':
      case 'uid':
      case 'gid': {
        const s = value.toString('latin1');
        const n = /^\d+$/.test(s) ? Number(s) : NaN;
        if (!Number.isFinite(n)) throw new TarFormatError(`bad PAX ${key} ${JSON.stringify(s)}`);
        into[key as 'size' | 'uid' | 'gid'] = Number.isSafeInteger(n) ? n : Infinity;
        break;
      }
      case 'mtime': {
        const m = /^(-?\d+)(?:\.(\d+))?$/.exec(value.toString('latin1'));
        if (m) into.mtime = [Number(m[1]), m[2] ? Number((m[2] + '000000000').slice(0, 9)) : 0];
        break;
      }
      default:
        if (key.startsWith(SCHILY)) {
          setXattr(key.slice(SCHILY.length), value);
        } else if (key.startsWith(LIBARCHIVE)) {
          if (value.length > Math.ceil(limits.maxXattrValue / 3) * 4 + 4) throw new TarFormatError(`PAX ${JSON.stringify(key.slice(0, 64))} value of ${value.length} bytes`);
          const b64 = value.toString('latin1');
          if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64)) throw new TarFormatError(`bad base64 in ${JSON.stringify(key.slice(0, 64))}`);
          setXattr(unescapeName(key.slice(LIBARCHIVE.length)), Buffer.from(b64, 'base64'));
        } else if (key.startsWith('GNU.sparse.')) {
          into.sparse = true;
        }
    }
  }
}

export class TarParser {
  private state = State.Header;
  /** Bytes still expected in the current state (Meta, Data, Skip). */
  private need = 0;
  private padAfter = 0;
  private partial: Buffer | null = null; // a header block split across chunks
  private partialLen = 0;
  private meta: Buffer[] = [];
  private metaLen = 0;
  private metaKind = '';
  private pending: Pending = {};
  private globalPax: Pending = {};
  private longName?: string;
  private longLink?: string;
  private sawEnd = false;
  private entries = 0;
  /** bytes of x/L/K records since the last entry */
  private pendingMetaBytes = 0;
  /** bytes of g records so far */
  private globalMetaBytes = 0;
  private readonly limits: Required<TarLimits>;

  constructor(private readonly handler: TarHandler, limits: TarLimits = DEFAULT_TAR_LIMITS) {
    this.limits = { ...DEFAULT_TAR_LIMITS, maxPendingMetaBytes: limits.maxMetaBytes, maxGlobalMetaBytes: limits.maxMetaBytes, ...limits };
  }

  /** Feeds the next chunk of the (uncompressed) archive; handler calls happen synchronously. */
  write(chunk: Buffer): void {
    let off = 0;
    const n = chunk.length;
    while (off < n) {
      switch (this.state) {
        case State.Header: {
          let block: Buffer;
          let at: number;
          if (this.partialLen === 0 && n - off >= BLOCK) {
            block = chunk;
            at = off;
            off += BLOCK;
          } else {
            this.partial ??= Buffer.alloc(BLOCK);
            const take = Math.min(BLOCK - this.partialLen, n - off);
            chunk.copy(this.partial, this.partialLen, off, off + take);
            this.partialLen += take;
            off += take;
            if (this.partialLen < BLOCK) return;
            this.partialLen = 0;
            block = this.partial;
            at = 0;
          }
          this.header(block, at);
          break;
        }
        case State.Meta: {
          const take = Math.min(this.need, n - off);
          this.meta.push(chunk.subarray(off, off + take));
          this.metaLen += take;
          this.need -= take;
          off += take;
          if (this.need === 0) this.metaDone();
          break;
        }
        case State.Data: {
          const take = Math.min(this.need, n - off);
          this.need -= take;
          const piece = chunk.subarray(off, off + take);
          off += take;
          this.handler.data(piece);
          if (this.need === 0) {
            this.handler.end();
            this.skip(this.padAfter);
          }
          break;
        }
        case State.Skip: {
          const take = Math.min(this.need, n - off);
          this.need -= take;
          off += take;
          if (this.need === 0) this.state = State.Header;
          break;
        }
        case State.End:
          return; // whatever follows the end marker is ignored (it is still hashed by the caller)
      }
    }
  }

  /** Call at the end of the input: refuses an archive cut in the middle of an entry. */
  finish(): void {
    if (this.state === State.End) return;
    if (this.state !== State.Header || this.partialLen !== 0) throw new TarFormatError('truncated archive');
    // Some writers omit the two zero blocks; an archive that ends on a header boundary is complete.
    if (this.entries === 0 && !this.sawEnd) return;
  }

  private skip(bytes: number): void {
    this.need = bytes;
    this.state = bytes > 0 ? State.Skip : State.Header;
  }

  private header(b: Buffer, at: number): void {
    if (isZeroBlock(b, at)) {
      this.sawEnd = true;
      this.state = State.End;
      return;
    }
    if (!checksumOk(b, at)) throw new TarFormatError('bad header checksum (not a tar archive, or corrupt)');
    const magic = b.toString('latin1', at + 257, at + 263);
    const ustar = magic === 'ustar\0';
    const gnu = magic === 'ustar ';
    if (!ustar && !gnu) throw new TarFormatError(`unsupported tar format (magic ${JSON.stringify(magic)})`);
    const typeflag = b[at + 156] === 0 ? '0' : String.fromCharCode(b[at + 156]);
    const size = parseNumeric(b, at + 124, 12);
    if (!(size >= 0)) throw new TarFormatError('invalid size field');
    const padded = size === Infinity ? Infinity : Math.ceil(size / BLOCK) * BLOCK;

    switch (typeflag) {
      case 'x':
      case 'g':
      case 'L':
      case 'K':
        if (size > this.limits.maxMetaBytes) throw new TarFormatError(`metadata record of ${size} bytes is larger than ${this.limits.maxMetaBytes}`);
        if (typeflag === 'g') {
          this.globalMetaBytes += size;
          if (this.globalMetaBytes > this.limits.maxGlobalMetaBytes) throw new TarFormatError(`more than ${this.limits.maxGlobalMetaBytes} bytes of global PAX records`);
        } else {
          this.pendingMetaBytes += size;
          if (this.pendingMetaBytes > this.limits.maxPendingMetaBytes) throw new TarFormatError(`more than ${this.limits.maxPendingMetaBytes} bytes of metadata records before one entry`);
        }
        this.metaKind = typeflag;
        this.meta = [];
        this.metaLen = 0;
        this.need = size;
        this.padAfter = padded - size;
        this.state = State.Meta;
        if (size === 0) this.metaDone();
        return;
      case 'S':
        throw new TarFormatError('GNU sparse files are not supported');
      case 'M':
        throw new TarFormatError('multi-volume archives are not supported');
    }

    let name = cstring(b, at, 100);
    if (ustar) {
      const prefix = cstring(b, at + 345, 155);
      if (prefix) name = `${prefix}/${name}`;
    }
    const p = { ...this.globalPax, ...this.pending };
    this.pending = {};
    this.pendingMetaBytes = 0;
    if (this.longName !== undefined) name = this.longName;
    if (p.path !== undefined) name = p.path;
    let linkname = cstring(b, at + 157, 100);
    if (this.longLink !== undefined) linkname = this.longLink;
    if (p.linkpath !== undefined) linkname = p.linkpath;
    this.longName = this.longLink = undefined;
    if (p.sparse) throw new TarFormatError('PAX sparse files are not supported');

    const realSize = p.size ?? size;
    let type: TarEntryType;
    switch (typeflag) {
      case '0':
      case '7':
        type = name.endsWith('/') ? 'dir' : 'file';
        break;
      case '1':
        type = 'link';
        break;
      case '2':
        type = 'symlink';
        break;
      case '3':
        type = 'char';
        break;
      case '4':
        type = 'block';
        break;
      case '5':
      case 'D': // GNU dumpdir: a directory followed by a listing we do not need
        type = 'dir';
        break;
      case '6':
        type = 'fifo';
        break;
      default:
        type = 'other';
    }
    const mtime = p.mtime ?? [parseNumeric(b, at + 136, 12), 0];
    const h: TarHeader = {
      name,
      type,
      typeflag,
      mode: (parseNumeric(b, at + 100, 8) || 0) & 0o7777,
      uid: p.uid ?? parseNumeric(b, at + 108, 8),
      gid: p.gid ?? parseNumeric(b, at + 116, 8),
      size: type === 'file' ? realSize : 0,
      mtime: Number.isFinite(mtime[0]) ? mtime[0] : 0,
      mtimeNsec: mtime[1],
      linkname,
      devmajor: type === 'char' || type === 'block' ? parseNumeric(b, at + 329, 8) : 0,
      devminor: type === 'char' || type === 'block' ? parseNumeric(b, at + 337, 8) : 0,
      xattrs: p.xattrs ?? null,
    };
    if (!Number.isSafeInteger(h.uid) || !Number.isSafeInteger(h.gid) || h.uid < 0 || h.gid < 0) throw new TarFormatError(`entry ${JSON.stringify(name)}: invalid uid/gid`);
    if (type !== 'file' && !Number.isSafeInteger(realSize)) throw new TarFormatError(`entry ${JSON.stringify(name)}: invalid size`);
    this.entries++;
    this.handler.entry(h); // the handler refuses absurd sizes before any data is read
    const dataBytes = realSize;
    const pad = dataBytes === Infinity ? 0 : Math.ceil(dataBytes / BLOCK) * BLOCK - dataBytes;
    if (type === 'file') {
      if (dataBytes === 0) {
        this.handler.end();
        this.state = State.Header;
        return;
      }
      this.need = dataBytes;
      this.padAfter = pad;
      this.state = State.Data;
      return;
    }
    this.skip(dataBytes + pad); // bodies of links, devices, dumpdirs … are not needed
  }

  private metaDone(): void {
    const buf = this.meta.length === 1 ? this.meta[0] : Buffer.concat(this.meta, this.metaLen);
    this.meta = [];
    switch (this.metaKind) {
      case 'x':
        parsePax(buf, this.pending, this.limits);
        break;
      case 'g':
        parsePax(buf, this.globalPax, this.limits);
        break;
      case 'L':
      case 'K': {
        let end = buf.indexOf(0);
        if (end < 0) end = buf.length;
        const s = buf.toString('latin1', 0, end);
        if (this.metaKind === 'L') this.longName = s;
        else this.longLink = s;
        break;
      }
    }
    this.skip(this.padAfter);
  }
}
