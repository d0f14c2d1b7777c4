//! `worker`: see [`gitfleet_worker::cli`].

fn main() -> std::process::ExitCode {
    gitfleet_worker::cli::main()
}
