//! The `dari-cni` binary: exec'd by the container runtime with CNI_* env and config on stdin.
//! Install it (or symlinks named `dari-bridge`, `dari-host-local`, `dari-portmap`) in CNI_PATH.

use std::io::Write;

fn main() {
    let argv0 = std::env::args().next().unwrap_or_default();
    // Logs go to $DARI_CNI_LOG_FILE when set, else stderr; never stdout.
    let mut log: Box<dyn Write> = match std::env::var_os("DARI_CNI_LOG_FILE") {
        Some(p) => match std::fs::OpenOptions::new().create(true).append(true).open(&p) {
            Ok(f) => Box::new(f),
            Err(_) => Box::new(std::io::stderr()),
        },
        None => Box::new(std::io::stderr()),
    };
    let code = dari_cni::plugin::run(
        &argv0,
        |k| std::env::var(k).ok(),
        &mut std::io::stdin().lock(),
        &mut std::io::stdout().lock(),
        &mut log,
    );
    std::process::exit(code);
}
