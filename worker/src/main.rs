//! `worker`: see [`gitfleet_worker::cli`].

#[global_allocator]
static ALLOCATOR: gitfleet_worker::Allocator = gitfleet_worker::Allocator;

fn main() -> std::process::ExitCode {
    gitfleet_worker::cli::main()
}
