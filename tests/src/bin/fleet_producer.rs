//! The `producer` command as a separate process for the observability tests (a command, the relay and the server
//! exporting their traces), built with the test package so the tests find it through
//! `CARGO_BIN_EXE_fleet_producer`.

fn main() -> std::process::ExitCode {
    gitfleet_producer::cli::main()
}
