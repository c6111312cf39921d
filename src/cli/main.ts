#!/usr/bin/env node
// podvisor command line: `podvisor serve` runs the CRI daemon.
import { Command } from 'commander';
import { ConfigError, loadConfig } from '../config/config';
import { Daemon } from '../daemon';
import { createLogger } from '../util/log';
import { registerCheckCommand } from './check';
import { registerConfigCommands } from './config';
import { announceReady, notify } from './readiness';
import { versionReport } from './version';
import { registerTemplateCommands } from './template';
import { registerVolumeCommands } from './volume';

const DEFAULT_CONFIG = '/etc/podvisor/config.toml';

/** Set once a signal asked the daemon to stop: only then may it end with status 0. */
let stopping = false;

/**
 * The daemon only ends through a signal. Anything else is a failure that must be logged and
 * exit non-zero, so systemd's Restart=on-failure restarts it: an error nobody caught, and Node's
 * event loop running dry (an await left with nothing that could ever settle it; Node would
 * otherwise exit with status 0 and no output).
 */
function guardUnexpectedEnd(logger: ReturnType<typeof createLogger>): void {
  const die = (what: string, err?: unknown) => {
    logger.fatal({ err }, what);
    logger.flush?.();
    process.exit(70); // EX_SOFTWARE
  };
  process.on('uncaughtException', (err) => die('uncaught exception: the daemon stops', err));
  process.on('unhandledRejection', (err) => die('unhandled promise rejection: the daemon stops', err));
  process.on('beforeExit', () => {
    if (!stopping) die('the event loop ran dry (an await that nothing can settle): the daemon stops');
  });
}

const program = new Command('podvisor')
  .option('-V, --version', 'versions: podvisor and its commit, Node, guest agent and kernel, QEMU')
  .description('Kubernetes CRI runtime: every pod is one lightweight QEMU VM');

program
  .command('serve')
  .description('serve the CRI RuntimeService and ImageService on a unix socket')
  .option('--config <toml>', 'config file', DEFAULT_CONFIG)
  .option('--socket <path>', 'CRI socket (default /run/podvisor/podvisor.sock)')
  .option('--root <dir>', 'persistent state (default /var/lib/podvisor)')
  .option('--state <dir>', 'runtime state (default /run/podvisor)')
  .option('--log-level <level>', 'trace, debug, info, warn, error')
  .option('--log-format <format>', 'json (default) or text (one readable line an entry)', 'json')
  .action(async (opts) => {
    let cfg;
    try {
      cfg = loadConfig(opts.config, opts.config === DEFAULT_CONFIG);
    } catch (err) {
      if (err instanceof ConfigError) {
        process.stderr.write(`podvisor: ${err.message}\n`);
        process.exit(2);
      }
      throw err;
    }
    if (opts.socket) cfg.socket = opts.socket;
    if (opts.root) cfg.root = opts.root;
    if (opts.state) cfg.state = opts.state;
    if (opts.logLevel) cfg.logLevel = opts.logLevel;
    if (!['json', 'text'].includes(opts.logFormat)) {
      process.stderr.write(`podvisor: --log-format must be json or text\n`);
      process.exit(2);
    }
    const logger = createLogger(cfg.logLevel, opts.logFormat);
    guardUnexpectedEnd(logger);
    const daemon = new Daemon(cfg, logger);
    notify(logger, { STATUS: 'starting: accelerator, images, pods' });
    try {
      await daemon.start();
      await announceReady(logger, cfg.socket, `serving CRI on ${cfg.socket}`);
    } catch (err) {
      logger.fatal({ err }, 'cannot start'); // pino's err serializer: type, message, stack, code
      notify(logger, { STATUS: `cannot start: ${(err as Error).message}` });
      process.exit(1);
    }
    const shutdown = async (sig: string) => {
      stopping = true;
      logger.info({ sig }, 'stopping (pod VMs keep running)');
      notify(logger, { STOPPING: 1, STATUS: 'stopping (pod VMs keep running)' });
      // QEMU processes and their timers are unref'd (pods outlive the daemon), so an await on a
      // VM's exit keeps nothing alive: without this handle Node would end the process mid-stop
      // (status 0, spares and socket left behind)
      const keepAlive = setInterval(() => undefined, 1_000);
      try {
        await daemon.stop();
      } catch (err) {
        logger.error({ err }, 'stopping failed part-way; a restarted daemon cleans up what is left');
        process.exit(1);
      } finally {
        clearInterval(keepAlive);
      }
      logger.info({ sig }, 'stopped');
      logger.flush?.();
      process.exit(0);
    };
    process.on('SIGTERM', () => void shutdown('SIGTERM'));
    process.on('SIGINT', () => void shutdown('SIGINT'));
  });

registerVolumeCommands(program);
registerTemplateCommands(program);
registerCheckCommand(program);
registerConfigCommands(program);

if (['-V', '--version'].includes(process.argv[2] ?? '')) {
  process.stdout.write(versionReport());
  process.exit(0);
}

program.parseAsync(process.argv).catch((err) => {
  process.stderr.write(`podvisor: ${(err as Error).message}\n`);
  process.exit(1);
});
