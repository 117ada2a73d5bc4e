//! mozpool binary entry point (thin; everything lives in the library).

fn main() {
    // Hidden hook for the simulated rack: `mozpool sim-fastboot --rack DIR ARGS...` is the
    // fastboot stand-in that the real `hw::Flasher` runs by path (via a wrapper script).
    // Keep this dispatch first when main.rs is rewritten.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("sim-fastboot") {
        std::process::exit(mozpool::hw::sim::sim_fastboot_main(
            args.get(2..).unwrap_or_default().to_vec(),
        ));
    }
}
