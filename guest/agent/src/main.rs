//! podvisor guest agent: PID 1 of the pod VM. See guest/PROTOCOL.md and guest/README.md.
// AsyncFd::new is deprecated only because it cannot prove the fd is owned; ours are OwnedFd.
#![allow(deprecated)]

mod agent;
mod conn;
mod containers;
mod cpus;
mod disks;
mod error;
mod exec;
mod executor;
mod frame;
mod handshake;
mod idmap;
mod init;
mod modprobe;
mod modules;
mod netlink;
mod network;
mod nfs;
mod outbox;
mod port;
mod portforward;
mod probe;
mod reaper;
mod rpc;
mod sandbox;
mod share;
mod stats;
mod stdio;
mod streams;
mod tmpfs;
mod users;
mod userns;
mod util;

pub const PORT_NAME: &str = "podvisor.agent";

/// Debug traces go to the console through an fd opened once at start: libcontainer's child
/// processes keep it until exec (close-on-exec), so their traces land there too instead of
/// in the container's stderr pipe.
fn console_writer() -> Box<dyn std::io::Write> {
    use std::os::fd::RawFd;
    static FD: std::sync::OnceLock<RawFd> = std::sync::OnceLock::new();
    let fd = *FD.get_or_init(|| {
        use std::os::fd::IntoRawFd;
        std::fs::OpenOptions::new().write(true).open("/dev/console").map(|f| f.into_raw_fd()).unwrap_or(-1)
    });
    if fd < 0 {
        return Box::new(std::io::sink());
    }
    Box::new(FdWriter(fd))
}

struct FdWriter(std::os::fd::RawFd);

impl std::io::Write for FdWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = unsafe { libc::write(self.0, b.as_ptr().cast(), b.len()) };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Containers get RLIMIT_NOFILE 1048576 (the host's spec). One in a user namespace of its own
/// sets it after entering that namespace, where raising a hard limit is refused (that takes
/// CAP_SYS_RESOURCE in the initial namespace): so PID 1's hard limit, which every container
/// starts from, is that ceiling already.
fn raise_nofile_ceiling() {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_max < 1_048_576 {
            r.rlim_max = 1_048_576;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                log!("raise RLIMIT_NOFILE: {}", std::io::Error::last_os_error());
            }
        }
    }
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Rust starts with SIGPIPE ignored, and an ignored signal stays ignored across exec: every
/// container process would inherit it (`yes | head` would spin on EPIPE forever). A no-op
/// handler gives the agent the same EPIPE behaviour, and exec resets it to the default.
fn sigpipe_handler() {
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGPIPE, &sa, std::ptr::null_mut());
    }
}

fn main() {
    // The kernel runs us as /sbin/modprobe (a symlink to /init) to load a module on demand.
    let args: Vec<String> = std::env::args().collect();
    if args.first().is_some_and(|a| a.rsplit('/').next() == Some("modprobe")) {
        std::process::exit(modprobe::main(&args));
    }
    if args.first().is_some_and(|a| executor::is_executor(a)) {
        executor::main();
    }
    sigpipe_handler();
    std::panic::set_hook(Box::new(|info| {
        log!("panic: {info}");
    }));
    let pid1 = std::process::id() == 1;
    let stage2 = std::env::args().any(|a| a == "--stage2");
    if pid1 && !stage2 {
        init::stage1();
    }
    if pid1 {
        init::stage2();
        raise_nofile_ceiling();
    }
    log!("agent {} starting", env!("CARGO_PKG_VERSION"));
    if std::env::var_os("podvisor_debug").is_some() {
        // libcontainer's own trace, with timestamps, on the console.
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_timer(tracing_subscriber::fmt::time::uptime())
            .with_writer(console_writer)
            .with_ansi(false)
            .try_init();
        let _ = console_writer();
    }

    // One vCPU under TCG: a single-threaded runtime avoids cross-thread wakeups, and keeps
    // libcontainer's fork()s in a process with one thread.
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            log!("tokio runtime: {e}");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let path = std::env::var("PODVISOR_AGENT_PORT").map(std::path::PathBuf::from);
        let path = match path {
            Ok(p) => p,
            Err(_) => port::find(PORT_NAME).await,
        };
        let session = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1));
        let (events, out) = loop {
            match port::start(&path, session.clone()) {
                Ok(p) => break p,
                Err(e) => {
                    log!("open {}: {e}", path.display());
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        };
        log!("serving on {}", path.display());
        let agent = agent::Agent::new(outbox::Outbox::new(out, session));
        tokio::task::spawn_local(reaper::run(agent.reaper.clone()));
        conn::serve(agent, events).await;
    });
}
