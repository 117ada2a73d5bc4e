//! The `mozpool` binary: parse the command line and hand off to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = mozpool::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mozpool: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(mozpool::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let code = e.downcast_ref::<mozpool::cli::Exit>().map_or(1, |x| x.code);
            eprintln!("mozpool: {e:#}");
            std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
    }
}
