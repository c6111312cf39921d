// `podvisor template build|ls|rm`: VM templates ahead of time, as the daemon builds them on
// demand (same key, same directory), so a build here is cloned by the running daemon. A build
// (tens of seconds under TCG) tells its steps on stderr as it goes.
import { Command } from 'commander';
import { Config, loadConfig } from '../config/config';
import { guestDigest } from '../daemon';
import { createLogger, type LogFormat } from '../util/log';
import { chooseAccelerator } from '../vm/accel';
import { TemplateManager } from '../vm/templates';
import { QemuHypervisor } from '../vm/qemu';

const DEFAULT_CONFIG = '/etc/podvisor/config.toml';

function config(opts: { config: string; root?: string }): Config {
  const cfg = loadConfig(opts.config, opts.config === DEFAULT_CONFIG);
  if (opts.root) cfg.root = opts.root;
  return cfg;
}

/**
 * `progress`: the build's steps (boot, guest ready, snapshot) as log lines on stderr, readable
 * text unless PODVISOR_LOG_FORMAT says json; stdout keeps the command's result alone.
 */
async function manager(cfg: Config, progress = false): Promise<TemplateManager> {
  const logger = createLogger(process.env.PODVISOR_LOG_LEVEL ?? (progress ? 'info' : 'warn'), (process.env.PODVISOR_LOG_FORMAT as LogFormat) ?? 'text', 2);
  const qemu = { binary: cfg.vm.qemu, kernel: cfg.vm.kernel, initramfs: cfg.vm.initramfs, kernelArgs: cfg.vm.kernelArgs, launcher: cfg.vm.launcher };
  // the daemon's cached KVM verdict (or a probe, once) so keys match the daemon's
  const accelerator = await chooseAccelerator(cfg.vm.accelerator, { ...qemu, logger }, cfg.root, cfg.state, logger);
  const driver = new QemuHypervisor({ ...qemu, tcgCodeMiB: cfg.vm.tcgCodeMiB, ksm: cfg.vm.ksm, accelerator, logger });
  return new TemplateManager({ dir: cfg.vm.templateDir, driver, guestDigest: () => guestDigest(cfg), logger });
}

function fail(err: unknown): never {
  process.stderr.write(`podvisor: ${(err as Error).message}\n`);
  process.exit(1);
}

export function registerTemplateCommands(program: Command): void {
  const t = program.command('template').description('VM templates that pod VMs are cloned from');
  const common = (c: Command) => c.option('--config <toml>', 'config file', DEFAULT_CONFIG).option('--root <dir>', 'persistent state (for the accelerator verdict)');

  common(t.command('build').description('build (or find) the template of a size class'))
    .option('--vcpus <n>', 'vCPUs', '1')
    .option('--memory <MiB>', 'guest memory in MiB', '256')
    .option('--nics <n>', 'network interfaces (1 for pods with a CNI network)', '1')
    .action(async (opts) => {
      try {
        const size = { vcpus: Number(opts.vcpus), memoryMiB: Number(opts.memory), nics: Number(opts.nics) };
        if (!(size.vcpus >= 1 && size.memoryMiB >= 64 && size.nics >= 0) || !Object.values(size).every(Number.isInteger)) throw new Error('--vcpus ≥ 1, --memory ≥ 64, --nics ≥ 0, whole numbers');
        // the build's own handles (QEMU is detached and unref'd) do not keep a CLI process alive
        const keepAlive = setInterval(() => undefined, 1000);
        const meta = await (await manager(config(opts), true)).ensure(size).finally(() => clearInterval(keepAlive));
        process.stdout.write(`${meta.key} ${meta.vcpus}x${meta.memoryMiB}x${meta.nics} built ${meta.createdAt} in ${meta.buildMs} ms\n`);
      } catch (err) {
        fail(err);
      }
    });

  common(t.command('ls').description('list templates')).action(async (opts) => {
    try {
      const list = (await manager(config(opts))).list();
      process.stdout.write('KEY                               SIZE        CREATED                   IN USE\n');
      for (const m of list) process.stdout.write(`${m.key}  ${`${m.vcpus}x${m.memoryMiB}x${m.nics}`.padEnd(10)}  ${m.createdAt}  ${m.inUse ? 'yes' : 'no'}\n`);
    } catch (err) {
      fail(err);
    }
  });

  common(t.command('rm [keys...]').description('delete templates (never one a pod VM still uses)'))
    .option('--all', 'every template not in use')
    .action(async (keys: string[], opts) => {
      try {
        const m = await manager(config(opts));
        const targets = opts.all ? m.list().map((x) => x.key) : keys;
        if (!targets.length) throw new Error('name template keys, or --all');
        let refused = 0;
        for (const key of targets) {
          if (!/^[0-9a-f]{32}$/.test(key)) throw new Error(`bad template key ${JSON.stringify(key)}`);
          if (await m.remove(key)) process.stdout.write(`removed ${key}\n`);
          else {
            refused++;
            process.stderr.write(`podvisor: template ${key} is in use by a pod VM; kept\n`);
          }
        }
        if (refused && !opts.all) process.exit(1);
      } catch (err) {
        fail(err);
      }
    });
}
