//! `dari-lab`: the lab commands as a standalone binary (`dari-lab up|down|status|exec|images`),
//! the same as `dari lab ...` once the CLI flattens [`dari_lab::LabArgs`]. `--dari` names the
//! binary the nodes run (`dari server`, `dari agent`, `dari lab forward`).

use clap::Parser;

#[derive(Parser)]
#[command(name = "dari-lab", about = "A multi-node dari cluster on one machine")]
struct Cli {
    #[command(flatten)]
    lab: dari_lab::LabArgs,
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dari-lab: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(async move {
        match dari_lab::run(cli.lab).await {
            Ok(c) => c,
            Err(e) => {
                let mut msg = format!("dari-lab: {e}");
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg.push_str(&format!(": {s}"));
                    src = s.source();
                }
                eprintln!("{msg}");
                1
            }
        }
    });
    std::process::exit(code);
}
