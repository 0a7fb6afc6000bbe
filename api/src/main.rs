use std::process::ExitCode;

use clap::Parser;

/// The server allocates many small, short-lived objects on many threads (requests, events, JSON):
/// mimalloc serves that pattern far better than the system allocator (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    quiet_display_probe();
    let cli = thitl::cli::Cli::parse();
    let default_filter = cli.default_log_filter();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("THITL_LOG").unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match thitl::cli::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Without a desktop session, Mesa's Vulkan driver looks for a Wayland display while wgpu
/// enumerates adapters and prints `error: XDG_RUNTIME_DIR is invalid or not set` twice, which
/// reads as a failure. thitl draws nothing on screen: an empty private runtime directory lets that
/// probe fail quietly. Runs first, while the process has one thread.
#[cfg(unix)]
fn quiet_display_probe() {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        return;
    }
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else { return };
    // One per user, private to them (as a real runtime directory is).
    let dir = std::env::temp_dir().join(format!("thitl-runtime-{uid}"));
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    let private = std::fs::symlink_metadata(&dir)
        .is_ok_and(|m| m.is_dir() && m.uid() == uid && m.permissions().mode() & 0o077 == 0);
    if private {
        // SAFETY: called at the start of `main`, before any other thread exists.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", &dir) };
    }
}

#[cfg(not(unix))]
fn quiet_display_probe() {}
