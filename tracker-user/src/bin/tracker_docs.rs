//! `tracker-docs DIR`: writes tracker's man page (`DIR/man/tracker.1`) and its bash, zsh and
//! fish completions (`DIR/completions`), made from the same flag definitions as
//! `tracker --help`. `cargo xtask build` runs it; packages install what it writes.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: tracker-docs DIR (writes DIR/man/tracker.1 and DIR/completions/)");
        return ExitCode::from(2);
    };
    let dir = PathBuf::from(dir);
    match tracker::cli::write_man_and_completions(&dir) {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tracker-docs: writing into {}: {error}", dir.display());
            ExitCode::FAILURE
        }
    }
}
