//! `dari-applet`: the small multi-call binary of the lab's stand-in images (whoami,
//! echo-server, pause). See `dari_lab::applets`.

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    std::process::exit(dari_lab::applets::applet_main(&argv));
}
