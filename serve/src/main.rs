//! `kb`: the knowledge-base service and its command line. The work is in the library
//! (serve/src/lib.rs); this binary parses the command line and runs it.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    kb::run(kb::Cli::parse())
}
