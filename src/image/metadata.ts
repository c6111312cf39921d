// The image index: one JSON document (<root>/metadata.json) with every image and its names,
// replaced atomically (write-file-atomic fsyncs the file; we fsync the directory) so a crash
// leaves either the old or the new state. Writes are serialized in call order.
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import writeFileAtomic from 'write-file-atomic';
import { fsyncDir } from '../util/dirs';

export interface StoredImage {
  id: string;               // sha256:<config digest>
  repoTags: string[];
  repoDigests: string[];
  size: number;
  manifestDigest: string;   // the linux/amd64 manifest
  topDigest: string;        // what was pulled (an index for multi-arch images)
  layers: string[];         // compressed layer digests, in order
  erofs: string;            // file name under <root>/erofs
  createdAt: number;
  /** Removed by the user while a container still used it: hidden, deleted on release. */
  deleted?: boolean;
}

interface Document {
  version: 1;
  images: StoredImage[];
}

export class MetadataStore {
  private queue: Promise<void> = Promise.resolve();

  constructor(readonly file: string) {}

  async load(): Promise<StoredImage[]> {
    let text: string;
    try {
      text = await fsp.readFile(this.file, 'utf8');
    } catch (e: any) {
      if (e.code === 'ENOENT') return [];
      throw e;
    }
    const doc = JSON.parse(text) as Document;
    if (doc.version !== 1 || !Array.isArray(doc.images)) throw new Error(`${this.file}: unknown format`);
    return doc.images;
  }

  /** Persists a snapshot; resolves once it is durable. */
  save(images: StoredImage[]): Promise<void> {
    const doc: Document = { version: 1, images: images.map((i) => ({ ...i })) };
    const text = JSON.stringify(doc, null, 1);
    const next = this.queue.then(async () => {
      await writeFileAtomic(this.file, text, { fsync: true, mode: 0o600 });
      await fsyncDir(path.dirname(this.file));
    });
    this.queue = next.catch(() => undefined);
    return next;
  }
}
