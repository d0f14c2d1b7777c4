//! `producer`: the front door's command line (see `producer --help`).

fn main() -> std::process::ExitCode {
    gitfleet_producer::cli::main()
}
