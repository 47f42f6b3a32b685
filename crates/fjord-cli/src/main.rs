//! The `fjord` binary: everything lives in the `fjord_cli` library.

fn main() -> std::process::ExitCode {
    fjord_cli::main()
}
