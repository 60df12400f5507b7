//! The `tl-gateway` binary: parse the command line, run it.

// Many small, short-lived allocations per request: mimalloc measurably beats the system allocator
// here (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tl_gateway::cli::main()
}
