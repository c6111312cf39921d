// `podvisor config default` prints the embedded defaults as a config file (a starting point for
// /etc/podvisor/config.toml); `podvisor config dump` prints what the daemon would run with: the
// file, its conf.d/*.toml drop-ins in order, over the defaults.
import { Command } from 'commander';
import { configToToml, defaultConfig, dropIns, loadConfig } from '../config/config';

const DEFAULT_CONFIG = '/etc/podvisor/config.toml';

export function registerConfigCommands(program: Command): void {
  const c = program.command('config').description('print the default or the effective configuration');
  c.command('default').description('the embedded defaults, as TOML').action(() => {
    process.stdout.write(configToToml(defaultConfig()));
  });
  c.command('dump')
    .description('the effective configuration: the file and its conf.d/*.toml drop-ins over the defaults')
    .option('--config <toml>', 'config file', DEFAULT_CONFIG)
    .action((opts) => {
      try {
        const cfg = loadConfig(opts.config, opts.config === DEFAULT_CONFIG);
        const drops = dropIns(opts.config);
        process.stdout.write(`# ${opts.config}${drops.length ? ` + ${drops.join(', ')}` : ''}\n${configToToml(cfg)}`);
      } catch (err) {
        process.stderr.write(`podvisor: ${(err as Error).message}\n`);
        process.exit(2);
      }
    });
}
