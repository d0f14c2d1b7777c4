//! Process logs: human-readable by default, JSON lines with `GITFLEET_LOG_FORMAT=json`; filter with `GITFLEET_LOG`
//! (the `RUST_LOG` syntax, default `info`).

use tracing_subscriber::EnvFilter;

pub fn init(settings: &crate::settings::LogSettings) {
    let filter = EnvFilter::try_new(&settings.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = settings.format == crate::settings::Format::Json;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // A second call (tests start several components in one process) keeps the first subscriber.
    let _ = if json {
        builder.with_writer(std::io::stderr).json().try_init()
    } else {
        // Text lines are escaped as they are written: a newline or terminal escape sequence in a repository's name
        // or message can neither forge a log line nor reach an operator's terminal (JSON escapes them itself).
        builder.with_ansi(false).with_writer(|| Escaping(std::io::stderr())).try_init()
    };
}

/// Writes each formatted line with its control characters escaped, keeping the line's own final newline.
struct Escaping<W>(W);

impl<W: std::io::Write> std::io::Write for Escaping<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (body, newline) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, true),
            None => (buf, false),
        };
        let text = String::from_utf8_lossy(body);
        let escaped = gitfleet_shared::sanitize::printable(&text);
        if matches!(escaped, std::borrow::Cow::Borrowed(_)) && matches!(text, std::borrow::Cow::Borrowed(_)) {
            self.0.write_all(buf)?;
        } else {
            let mut line = escaped.into_owned().into_bytes();
            if newline {
                line.push(b'\n');
            }
            self.0.write_all(&line)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}
