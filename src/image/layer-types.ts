// The data that crosses between the layer reader (unpack.ts) and its worker threads
// (layer-pool.ts): limits in, what one layer produced out. Its own module so that the pool and
// the reader, which use each other's results, do not import each other.
import type { FileNode } from './erofs';
import type { TarHeader } from './tar';

export interface UnpackLimits {
  maxEntries: number; // per image
  maxEntryBytes: number; // one file
  maxTotalBytes: number; // all layers, uncompressed file data
  /** Names, symlink targets and xattrs held in memory for the whole image. */
  maxMetadataBytes: number;
}

/** One tar entry of a layer as the replay needs it (file data is already in the image). */
export interface Op {
  h: TarHeader;
  rel: string;
  /** Regular files: the node, data written. */
  file: FileNode | null;
  xattrs: Map<string, Buffer> | null;
}

/** What reading one layer produced (its file data is in the image already): the replay's input. */
export interface LayerRead {
  ops: Op[];
  droppedXattrs: string[];
  /** how many xattrs were dropped (droppedXattrs names only the first few) */
  droppedXattrCount: number;
  /** Entries of unsupported types, for the log. */
  skipped: { entry: string; typeflag: string }[];
}
