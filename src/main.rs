fn main() -> std::process::ExitCode {
    tl_gateway::cli::main()
}
