//! Every bad option or setting of the worker binary is refused at start-up with a message naming it and exit 2,
//! before anything connects anywhere.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_worker")).args(args).envs(env.iter().copied()).output().unwrap();
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn bad_options_exit_2_with_a_message() {
    for (args, env, needle) in [
        (vec!["--prefetch", "0"], vec![], "--prefetch"),
        (vec!["--git-timeout-secs", "0"], vec![], "--git-timeout-secs"),
        (vec!["--transient-retries", "0"], vec![], "--transient-retries"),
        (vec!["--heartbeat-secs", "0"], vec![], "--heartbeat-secs"),
        (vec!["--max-file-bytes", "0"], vec![], "--max-file-bytes"),
        (vec!["--retry-delays", "5,0"], vec![], "--retry-delays"),
        (vec![], vec![("GITFLEET_RETRY_DELAYS", "5,soon")], "--retry-delays"),
        (vec![], vec![("GITFLEET_DELIVERY_LIMIT", "0")], "--delivery-limit"),
        (vec![], vec![("GITFLEET_DATABASE_POOL_SIZE", "0")], "--database-pool-size"),
        (vec![], vec![("GITFLEET_SCOPE_MODE", "loose")], "--scope-mode"),
        (vec![], vec![("GITFLEET_LOG_FORMAT", "yaml")], "--log-format"),
        (vec!["check", ".", "--max-record-bytes", "0"], vec![], "--max-record-bytes"),
        (vec!["check", ".", "--format", "yaml"], vec![], "--format"),
    ] {
        let (code, stderr) = run(&args, &env);
        assert_eq!(code, 2, "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains("invalid value") && stderr.contains(needle), "{args:?} {env:?}: {stderr}");
    }
}
