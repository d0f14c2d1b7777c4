//! A repository's `sync_interval`: how often the scheduler asks its remote for the branch's tip. Written as a
//! duration (`30s`, `5m`, `1h`, `1h30m`), stored in seconds.

/// The shortest interval: polling a remote more often than this is left to webhooks.
pub const MIN_SYNC_INTERVAL_SECS: i32 = 10;
/// The longest interval: a week.
pub const MAX_SYNC_INTERVAL_SECS: i32 = 7 * 24 * 3600;

/// Parses a duration such as `30s`, `5m`, `1h` or `1h30m` into seconds, within the bounds above.
pub fn parse_sync_interval(text: &str) -> Result<i32, String> {
    let shape = || format!("\"{text}\" is not a duration: write it as 30s, 5m, 1h or 1h30m.");
    let parsed = humantime::parse_duration(text.trim()).map_err(|_| shape())?;
    if parsed.subsec_nanos() != 0 {
        return Err(format!("The sync interval must be a whole number of seconds, not {text}."));
    }
    let secs = i32::try_from(parsed.as_secs()).unwrap_or(i32::MAX);
    check_sync_interval(secs).map(|()| secs)
}

/// The bounds on an interval in seconds.
pub fn check_sync_interval(secs: i32) -> Result<(), String> {
    if (MIN_SYNC_INTERVAL_SECS..=MAX_SYNC_INTERVAL_SECS).contains(&secs) {
        Ok(())
    } else {
        Err(format!(
            "The sync interval must be between {MIN_SYNC_INTERVAL_SECS} seconds and 7 days (it is {}).",
            format_sync_interval(secs)
        ))
    }
}

/// An interval in seconds as the shortest duration text (`300` is `5m`, `5400` is `1h30m`).
pub fn format_sync_interval(secs: i32) -> String {
    let secs = u64::try_from(secs).unwrap_or(0);
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string().replace(' ', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_to_seconds_within_bounds() {
        assert_eq!(parse_sync_interval("30s"), Ok(30));
        assert_eq!(parse_sync_interval("5m"), Ok(300));
        assert_eq!(parse_sync_interval("1h30m"), Ok(5400));
        assert_eq!(parse_sync_interval(" 1h "), Ok(3600));
        assert!(parse_sync_interval("5").unwrap_err().contains("not a duration"));
        assert!(parse_sync_interval("soon").unwrap_err().contains("not a duration"));
        assert!(parse_sync_interval("9s").unwrap_err().contains("between 10 seconds and 7 days (it is 9s)"));
        assert!(parse_sync_interval("8d").unwrap_err().contains("between"));
        assert!(parse_sync_interval("1500ms").unwrap_err().contains("whole number"));
    }

    #[test]
    fn intervals_print_as_they_are_written() {
        assert_eq!(format_sync_interval(300), "5m");
        assert_eq!(format_sync_interval(5400), "1h30m");
        assert_eq!(format_sync_interval(45), "45s");
        assert_eq!(parse_sync_interval(&format_sync_interval(90_061)), Ok(90_061));
    }
}
