//! Headless Chromium driven over WebDriver (chromedriver), started by the test on a free
//! loopback port and stopped by its PID when the test ends.
#![allow(clippy::unwrap_used)] // test helpers

use std::path::{Path, PathBuf};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
// chromedriver speaks plain HTTP on loopback: no TLS connector.
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

/// One chromedriver process and one Chromium session with a fresh profile.
pub(crate) struct Browser {
    pub client: Client,
    driver: std::process::Child,
    _profile: tempfile::TempDir,
    /// Where screenshots go (the test's output directory).
    pub out: PathBuf,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium; `javascript` false disables scripts.
    pub async fn start(test: &str, javascript: bool) -> Browser {
        let driver_bin = which("chromedriver").unwrap_or_else(|| {
            panic!(
                "chromedriver not found on PATH: install Debian's `chromium` and \
                 `chromium-driver` packages (apt-get install -y chromium chromium-driver; \
                 .ci/run does this)"
            )
        });
        let chromium = ["chromium", "chromium-browser", "google-chrome"]
            .iter()
            .find_map(|b| which(b))
            .unwrap_or_else(|| panic!("chromium not found on PATH: apt-get install -y chromium"));
        let port = free_port();
        let driver = std::process::Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let profile = tempfile::tempdir().unwrap();
        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--no-first-run".into(),
            "--no-default-browser-check".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-extensions".into(),
            "--window-size=1100,900".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        if !javascript {
            args.push("--blink-settings=scriptEnabled=false".into());
        }
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": chromium, "args": args }),
        );
        let url = format!("http://127.0.0.1:{port}");
        // chromedriver takes a moment to listen on a loaded machine.
        let mut last = None;
        let mut client = None;
        for _ in 0..120 {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => {
                    client = Some(c);
                    break;
                }
                Err(e) => {
                    last = Some(e.to_string());
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
        let client = client.unwrap_or_else(|| panic!("no WebDriver session: {last:?}"));
        let out = output_dir(test);
        Browser {
            client,
            driver,
            _profile: profile,
            out,
        }
    }

    /// Saves a PNG of the page as `name` in the test's output directory; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.unwrap();
        let p = self.out.join(name);
        std::fs::write(&p, png).unwrap();
        p
    }

    /// The visible text of the page, or the WebDriver error (a page that navigates between
    /// finding `body` and reading it answers "stale element reference").
    async fn try_text(&self) -> Result<String, fantoccini::error::CmdError> {
        self.client.find(Locator::Css("body")).await?.text().await
    }

    /// Waits (up to 60 s, polling) until the page text contains `needle`. A page still loading
    /// (no body yet, or a body replaced while it was read) is polled again, not an error.
    pub async fn wait_text(&self, needle: &str) -> String {
        let mut text = String::new();
        for _ in 0..240 {
            match self.try_text().await {
                Ok(t) => text = t,
                Err(e) if is_loading(&e) => {}
                Err(e) => panic!("reading the page failed: {e}"),
            }
            if text.contains(needle) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("page never showed {needle:?}; it shows:\n{text}");
    }

    /// Ends the session, then stops chromedriver by its PID.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A panicking test still stops its chromedriver (and with it Chromium).
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `target/e2e-output/<test>` (created fresh).
pub(crate) fn output_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("e2e-output")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether a WebDriver error only means the page was (re)loading while it was read.
fn is_loading(e: &fantoccini::error::CmdError) -> bool {
    // Chromium also answers a node of the page being replaced with an "unknown error"
    // ("Node with given id does not belong to the document").
    e.is_stale_element_reference()
        || e.is_no_such_element()
        || e.to_string().contains("does not belong to the document")
}
