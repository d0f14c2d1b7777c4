//! The worker as a separate process for the crash, shutdown and chaos tests (they SIGKILL and SIGTERM it), built
//! with the test package so the tests find it through `CARGO_BIN_EXE_fleet_worker`.

#[global_allocator]
static ALLOCATOR: gitfleet_worker::Allocator = gitfleet_worker::Allocator;

fn main() -> std::process::ExitCode {
    gitfleet_worker::cli::main()
}
