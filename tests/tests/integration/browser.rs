//! The web UI in a real browser: headless Chromium (Debian's `chromium`) driven through ChromeDriver over
//! WebDriver, against `producer serve` and a worker on the real services. A person signs in, creates a repository
//! with the form, watches its first sync reach SUCCESS on the JobResult page, reads its records, makes a sync fail
//! and reads the error line, replays a dead letter, and a read-only session finds no way to sync. Every page is
//! saved as a screenshot under the test's output directory (`$CARGO_TARGET_TMPDIR/ui-browser/`), at desktop and
//! phone widths; the browser's console must stay free of errors, and axe-core (from the npm registry, run in the
//! page) must find no serious or critical accessibility violation.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fantoccini::{Client, ClientBuilder, Locator};
use gitfleet_producer::tokens::{self, Scope};
use serde_json::{Value, json};

use crate::support::git::Remote;
use crate::support::{TestEnv, free_port, path_segment, wait_port};

/// ChromeDriver on a loopback port, stopped when dropped.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The browser's console log since the last read (ChromeDriver's log endpoint).
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(json!({ "type": "browser" }).to_string()))
    }
}

fn axe_source() -> Result<String> {
    let dir = match std::env::var("GITFLEET_AXE_DIR") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => {
            let cache = PathBuf::from(std::env::var("HOME")?).join(".cache/gitfleet-ci");
            let mut found: Vec<PathBuf> = std::fs::read_dir(&cache)
                .with_context(|| format!("{} (run make test-deps)", cache.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("axe-core-")))
                .collect();
            found.sort();
            found.pop().context("axe-core is not installed: run make test-deps")?
        }
    };
    Ok(std::fs::read_to_string(dir.join("node_modules/axe-core/axe.min.js"))?)
}

struct Browser {
    client: Client,
    base: String,
    shots: PathBuf,
    axe: String,
    shot: usize,
}

impl Browser {
    async fn start(base: &str) -> Result<(Self, Driver)> {
        let port = free_port();
        let driver = Driver(
            Command::new("/usr/bin/chromedriver")
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("chromedriver (Debian's chromium-driver: run make test-deps)")?,
        );
        wait_port(port).await?;
        let profile = tempfile::tempdir()?.keep();
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                         "--no-first-run", "--disable-background-networking", "--disable-component-update",
                         "--disable-sync", "--window-size=1280,900", format!("--user-data-dir={}", profile.display())],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let Value::Object(capabilities) = capabilities else { bail!("capabilities") };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .context("a Chromium session through ChromeDriver")?;
        let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-browser");
        std::fs::create_dir_all(&shots)?;
        Ok((Self { client, base: base.to_owned(), shots, axe: axe_source()?, shot: 0 }, driver))
    }

    async fn goto(&self, path: &str) -> Result<()> {
        Ok(self.client.goto(&format!("{}{path}", self.base)).await?)
    }

    async fn source(&self) -> Result<String> {
        Ok(self.client.source().await?)
    }

    /// Waits (bounded) until the page holds `needle`, reloading as the page itself would.
    async fn until_text(&self, needle: &str, limit: Duration) -> Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            let html = self.source().await?;
            if html.contains(needle) {
                return Ok(html);
            }
            if Instant::now() > deadline {
                bail!("{needle:?} not on {} after {limit:?}:\n{html}", self.client.current_url().await?);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn fill(&self, id: &str, value: &str) -> Result<()> {
        let field = self.client.find(Locator::Id(id)).await?;
        field.clear().await?;
        field.send_keys(value).await?;
        Ok(())
    }

    async fn click(&self, css: &str) -> Result<()> {
        self.client.find(Locator::Css(css)).await?.click().await?;
        Ok(())
    }

    /// A screenshot of the page at desktop and phone widths, the console free of errors, and axe-core's verdict.
    async fn check(&mut self, name: &str) -> Result<()> {
        for (width, height, label) in [(1280, 900, "desktop"), (390, 844, "phone")] {
            self.client.set_window_size(width, height).await?;
            self.shot += 1;
            let png = self.client.screenshot().await?;
            std::fs::write(self.shots.join(format!("{:02}-{name}-{label}.png", self.shot)), png)?;
            let report = self
                .client
                .execute_async(
                    &format!(
                        "{}\nconst done = arguments[arguments.length - 1];
                         axe.run(document, {{ resultTypes: ['violations'] }})
                            .then(r => done(r.violations.map(v => ({{ id: v.id, impact: v.impact, help: v.help,
                                nodes: v.nodes.map(n => n.target.join(' ')) }}))))
                            .catch(e => done([{{ id: 'axe-error', impact: 'critical', help: String(e), nodes: [] }}]));",
                        self.axe
                    ),
                    vec![],
                )
                .await?;
            let serious: Vec<&Value> = report
                .as_array()
                .context("axe's report")?
                .iter()
                .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
                .collect();
            assert!(serious.is_empty(), "{name} at {label} width: accessibility violations {serious:#?}");
        }
        self.client.set_window_size(1280, 900).await?;
        let log = self.client.issue_cmd(BrowserLog).await?;
        let errors: Vec<&Value> =
            log.as_array().into_iter().flatten().filter(|e| e["level"].as_str() == Some("SEVERE")).collect();
        assert!(errors.is_empty(), "{name}: console errors {errors:#?}");
        Ok(())
    }

    async fn sign_in(&mut self, token: &str) -> Result<()> {
        self.goto("/ui/sign-in").await?;
        self.check("sign-in").await?;
        self.fill("token", token).await?;
        self.click("form.card button[type=submit]").await?;
        self.until_text("Signed in as", Duration::from_secs(10)).await?;
        Ok(())
    }

    async fn sign_out(&self) -> Result<()> {
        self.click("header form button[type=submit]").await?;
        self.until_text("API token", Duration::from_secs(10)).await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_uses_the_ui_in_a_browser() -> Result<()> {
    let mut env = TestEnv::new().await?;
    env.start_fleet(1);
    let base = env.start_api().await?;
    let admin = tokens::create(&env.pool, "operator", &[Scope::Admin]).await?.context("token")?;
    let reader = tokens::create(&env.pool, "viewer", &[Scope::Read]).await?.context("token")?;
    let remote = Remote::new(env.tmp.path(), "network")?;
    remote.commit(
        "first",
        &[(
            "config_contexts/ntp.json",
            r#"{"_metadata": {"name": "ntp-servers", "weight": 1000}, "ntp": ["10.1.1.1"]}"#,
        )],
    )?;
    let (mut browser, _driver) = Browser::start(&base).await?;

    // Sign in, then create a repository with the form.
    browser.sign_in(&admin).await?;
    browser.check("repositories-empty").await?;
    browser.click("a[href='/ui/new-repository']").await?;
    browser.until_text("New repository", Duration::from_secs(10)).await?;
    browser.check("new-repository").await?;
    let name = format!("Network {}", env.id);
    browser.fill("name", &name).await?;
    browser.fill("remote_url", &remote.file_url()).await?;
    browser.click("#provides-extras-configcontext").await?;
    browser.click("form.card button[type=submit]").await?;

    // The JobResult page follows the first sync to SUCCESS.
    browser.until_text("JobResult", Duration::from_secs(10)).await?;
    browser.until_text(r#"class="badge ok">SUCCESS<"#, Duration::from_secs(60)).await?;
    browser.check("job-result-success").await?;

    // The repository and its records.
    browser.goto("/ui/repositories").await?;
    let list = browser.until_text(&name, Duration::from_secs(10)).await?;
    assert!(list.contains(">SUCCESS<"), "{list}");
    browser.check("repositories").await?;
    browser.click(&format!("a[href='/ui/repositories/{}']", path_segment(&name))).await?;
    browser.until_text("config_contexts: 1", Duration::from_secs(10)).await?;
    browser.check("repository").await?;
    browser.click("details summary").await?;
    browser.click("details li a").await?;
    browser.until_text("10.1.1.1", Duration::from_secs(10)).await?;
    browser.check("record").await?;

    // A sync that fails: the error line is in the log table.
    remote.commit("broken", &[("config_contexts/ntp.json", "{ not json")])?;
    browser.goto(&format!("/ui/repositories/{}", path_segment(&name))).await?;
    browser.click("form[action$='/sync'] button").await?;
    let failed = browser.until_text(r#"class="badge bad">FAILURE<"#, Duration::from_secs(60)).await?;
    assert!(failed.contains(r#"class="level-error""#) && failed.contains("ntp.json"), "the error line: {failed}");
    browser.check("job-result-failure").await?;
    browser.client.find(Locator::Id("level")).await?.select_by_value("error").await?;
    browser.click("form.filters button").await?;
    browser.until_text("at level error", Duration::from_secs(10)).await?;

    // A dead letter, replayed from the fleet page.
    let event_id = crate::support::dead_letter_last_event(&env).await?;
    browser.goto("/ui/fleet").await?;
    browser.until_text("delivery limit reached", Duration::from_secs(10)).await?;
    browser.check("fleet").await?;
    browser.click("form[action^='/ui/dead-letters/'] button").await?;
    browser.until_text(&format!("JobResult {event_id}"), Duration::from_secs(10)).await?;
    browser.goto("/ui/fleet").await?;
    browser.until_text("None waiting.", Duration::from_secs(10)).await?;

    // A read-only session has no Sync button, and a post made anyway is refused.
    browser.sign_out().await?;
    browser.sign_in(&reader).await?;
    browser.goto(&format!("/ui/repositories/{}", path_segment(&name))).await?;
    let seen = browser.until_text("Definition", Duration::from_secs(10)).await?;
    assert!(!seen.contains(">Sync</button>") && !seen.contains(">Delete</a>"), "{seen}");
    browser.check("repository-read-only").await?;
    let status = browser
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const body = new URLSearchParams({ csrf: document.querySelector('input[name=csrf]').value });
             fetch(location.pathname + '/sync', { method: 'POST', body }).then(r => done(r.status));",
            vec![],
        )
        .await?;
    assert_eq!(status, json!(403), "a read-only session cannot sync");
    browser.client.close().await?;
    env.teardown().await
}
