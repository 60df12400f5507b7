//! The `tl-gateway` binary: parse the command line, run it.

fn main() -> std::process::ExitCode {
    tl_gateway::cli::main()
}
