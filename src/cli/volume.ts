// `podvisor volume add|rm|ls` (hand-written volume descriptors, like Kata's direct-volume) and
// `podvisor csi` (the CSI plugin). The lead wires registerVolumeCommands(program) into main.ts.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Command } from 'commander';
import writeFileAtomic from 'write-file-atomic';
import { CsiPlugin, DRIVER_NAME } from '../../storage/csi/server';
import { loadSealKey, readDescriptor, removeDescriptor, writeDescriptor } from '../../storage/descriptor';
import { StorageError } from '../../storage/errors';

const DEFAULT_ROOT = '/var/lib/podvisor';

/** podvisor's storage state dir under --root: seal key, volume index, pod attachment files. */
export function storageDir(root: string): string {
  return path.join(root, 'storage');
}

function indexFile(root: string): string {
  return path.join(storageDir(root), 'volumes.json');
}

async function readIndex(root: string): Promise<string[]> {
  try {
    const v = JSON.parse(await fsp.readFile(indexFile(root), 'utf8'));
    return Array.isArray(v) ? v.filter((x) => typeof x === 'string') : [];
  } catch {
    return [];
  }
}

async function writeIndex(root: string, dirs: string[]): Promise<void> {
  await fsp.mkdir(storageDir(root), { recursive: true, mode: 0o700 });
  await writeFileAtomic(indexFile(root), JSON.stringify([...new Set(dirs)].sort(), null, 1) + '\n', { mode: 0o600 });
}

function die(err: unknown): never {
  process.stderr.write(`podvisor: ${(err as Error).message}\n`);
  process.exit(err instanceof StorageError ? 2 : 1);
}

const collect = (v: string, prev: string[]) => [...prev, v];

/** Builds a descriptor from `volume add` options (or reads one from --from). */
async function descriptorFromOptions(opts: any): Promise<Record<string, unknown>> {
  let desc: Record<string, unknown>;
  if (opts.from) {
    const text = opts.from === '-' ? fs.readFileSync(0, 'utf8') : await fsp.readFile(opts.from, 'utf8');
    desc = JSON.parse(text);
  } else if (opts.block) {
    desc = { version: 1, kind: 'block', block: { device: opts.block } };
  } else if (opts.nfs) {
    const m = /^(\[[^\]]+\]|[^:]+):(\/.*)$/.exec(opts.nfs);
    if (!m) throw new Error('--nfs wants server:/export');
    desc = { version: 1, kind: 'nfs', nfs: { server: m[1], export: m[2], ...(opts.nfsVersion ? { version: opts.nfsVersion } : {}) } };
  } else if (opts.rbd) {
    const m = /^([^/]+)\/(?:([^/]+)\/)?([^/]+)$/.exec(opts.rbd);
    if (!m) throw new Error('--rbd wants pool/image or pool/namespace/image');
    if (!opts.monitors || !opts.user || !opts.keyFile) throw new Error('--rbd needs --monitors, --user and --key-file');
    desc = {
      version: 1, kind: 'rbd',
      rbd: { monitors: String(opts.monitors).split(','), pool: m[1], ...(m[2] ? { namespace: m[2] } : {}), image: m[3], user: opts.user, secret: { keyFile: path.resolve(opts.keyFile) } },
    };
  } else {
    throw new Error('say what to attach: --block <device>, --rbd <pool/image>, --nfs <server:/export> or --from <descriptor.json>');
  }
  if (opts.fsType) desc.fsType = opts.fsType;
  if (opts.readonly) desc.readOnly = true;
  if (opts.format) desc.format = true;
  if (opts.mountOption?.length) desc.mountOptions = opts.mountOption;
  return desc;
}

export function registerVolumeCommands(program: Command): void {
  const volume = program.command('volume').description('hand volumes straight to pod VMs: write/remove/list volume descriptors');

  volume
    .command('add <dir>')
    .description('make <dir> a volume: when a pod mounts it, the volume is attached to the pod VM instead of sharing the directory')
    .option('--root <dir>', 'podvisor persistent state (seal key, index)', DEFAULT_ROOT)
    .option('--block <device>', 'a host block device')
    .option('--rbd <pool/image>', 'a Ceph RBD image (with --monitors, --user, --key-file)')
    .option('--monitors <list>', 'Ceph monitors, comma separated host[:port]')
    .option('--user <id>', 'cephx user (without client.)')
    .option('--key-file <path>', 'root-only file holding the cephx key (never the key itself)')
    .option('--nfs <server:/export>', 'an NFS export, mounted by the guest')
    .option('--nfs-version <v>', '4.1 (default), 4.2, 4 or 3')
    .option('--from <file>', 'a descriptor JSON file (storage/README.md), - for stdin')
    .option('--fs-type <type>', 'ext4 (default), xfs, btrfs, vfat, erofs, squashfs, auto')
    .option('--mount-option <opt>', 'a guest mount option (repeatable)', collect, [])
    .option('--readonly', 'attach and mount read-only')
    .option('--format', 'allow mkfs when the device holds no filesystem')
    .action(async (dir: string, opts) => {
      try {
        const abs = path.resolve(dir);
        await fsp.mkdir(abs, { recursive: true });
        const key = await loadSealKey(path.join(storageDir(opts.root), 'volume-seal.key'));
        const desc = await writeDescriptor(abs, await descriptorFromOptions(opts), key);
        await writeIndex(opts.root, [...(await readIndex(opts.root)), abs]);
        process.stdout.write(`${abs}: ${desc.kind} volume\n`);
      } catch (err) {
        die(err);
      }
    });

  volume
    .command('rm <dir>')
    .description('remove the descriptor from <dir> (a pod mounting it again gets the plain directory)')
    .option('--root <dir>', 'podvisor persistent state', DEFAULT_ROOT)
    .action(async (dir: string, opts) => {
      try {
        const abs = path.resolve(dir);
        const had = await removeDescriptor(abs);
        await writeIndex(opts.root, (await readIndex(opts.root)).filter((d) => d !== abs));
        if (!had) process.stderr.write(`podvisor: ${abs} held no descriptor\n`);
      } catch (err) {
        die(err);
      }
    });

  volume
    .command('ls [dirs...]')
    .description('list descriptors added with `volume add` (or in the given directories), checking each')
    .option('--root <dir>', 'podvisor persistent state', DEFAULT_ROOT)
    .option('--json', 'JSON output')
    .action(async (dirs: string[], opts) => {
      try {
        const list = dirs.length ? dirs.map((d) => path.resolve(d)) : await readIndex(opts.root);
        let key: Buffer | undefined;
        try {
          key = await loadSealKey(path.join(storageDir(opts.root), 'volume-seal.key'), false);
        } catch { /* no key yet: nothing can be sealed */ }
        const rows = [];
        for (const dir of list) {
          try {
            const d = await readDescriptor(dir, { sealKey: key });
            if (!d) rows.push({ dir, status: 'missing' });
            else {
              const what = d.kind === 'block' ? d.block.device : d.kind === 'rbd' ? `${d.rbd.pool}/${d.rbd.namespace ? d.rbd.namespace + '/' : ''}${d.rbd.image}` : `${d.nfs.server}:${d.nfs.export}`;
              rows.push({ dir, status: 'ok', kind: d.kind, source: what, readOnly: d.readOnly, fsType: d.fsType });
            }
          } catch (err) {
            rows.push({ dir, status: 'invalid', error: (err as Error).message });
          }
        }
        if (opts.json) process.stdout.write(JSON.stringify(rows, null, 2) + '\n');
        else {
          for (const r of rows) {
            const extra = r.status === 'ok' ? `${r.kind}\t${r.source}\t${r.fsType}${r.readOnly ? '\tro' : ''}` : r.status === 'invalid' ? `INVALID: ${r.error}` : 'no descriptor';
            process.stdout.write(`${r.dir}\t${extra}\n`);
          }
        }
      } catch (err) {
        die(err);
      }
    });

  program
    .command('csi')
    .description('run the podvisor CSI plugin (NodePublish writes volume descriptors; Controller manages RBD images)')
    .requiredOption('--endpoint <unix:///path>', 'CSI socket, e.g. unix:///csi/csi.sock')
    .option('--node-id <id>', 'node name (default: host name)', os.hostname())
    .option('--mode <mode>', 'node, controller or all', 'all')
    .option('--root <dir>', 'podvisor persistent state (the seal key is shared with the daemon)', DEFAULT_ROOT)
    .option('--secrets-dir <dir>', 'root-only dir for published RBD key files (default <root>/storage/csi-keys)')
    .option('--ceph-monitors <list>', 'default Ceph monitors, comma separated')
    .option('--ceph-timeout <s>', 'Ceph connect timeout, seconds', '10')
    .option('--driver-name <name>', 'CSI driver name', DRIVER_NAME)
    .action(async (opts) => {
      const plugin = new CsiPlugin({
        endpoint: opts.endpoint,
        nodeId: opts.nodeId,
        controller: opts.mode === 'controller' || opts.mode === 'all',
        node: opts.mode === 'node' || opts.mode === 'all',
        secretsDir: opts.secretsDir ?? path.join(storageDir(opts.root), 'csi-keys'),
        sealKeyFile: opts.mode === 'controller' ? null : path.join(storageDir(opts.root), 'volume-seal.key'),
        monitors: opts.cephMonitors ? String(opts.cephMonitors).split(',') : undefined,
        cephTimeoutSec: Number(opts.cephTimeout),
        driverName: opts.driverName,
        logger: {
          info: (o, m) => process.stdout.write(JSON.stringify({ level: 'info', msg: m, ...o }) + '\n'),
          warn: (o, m) => process.stderr.write(JSON.stringify({ level: 'warn', msg: m, ...o }) + '\n'),
        },
      });
      try {
        await plugin.start();
      } catch (err) {
        die(err);
      }
      const stop = () => plugin.stop().finally(() => process.exit(0));
      process.once('SIGTERM', stop);
      process.once('SIGINT', stop);
    });
}
