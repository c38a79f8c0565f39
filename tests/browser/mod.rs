//! Harness for the web UI's browser tests: Debian's headless Chromium
//! driven over WebDriver (`chromedriver`, started here on a loopback port)
//! with the fantoccini client. When either program is missing the tests
//! skip, unless `FERRO_REQUIRE_BROWSER` is set (as `.ci/run` does), when
//! they fail.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Whether screenshots are to be saved (`FERRO_UI_SCREENSHOTS`).
pub fn screenshots_wanted() -> bool {
    std::env::var_os("FERRO_UI_SCREENSHOTS").is_some()
}

/// A headless Chromium session; the driver is killed on drop.
pub struct Browser {
    pub client: Client,
    driver: Child,
    /// Chromium's fresh profile (removed on drop).
    _profile: tempfile::TempDir,
}

fn found(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Browser {
    /// A browser, or `None` (the test skips) when Chromium or its driver
    /// is not installed and `FERRO_REQUIRE_BROWSER` is not set.
    pub async fn start() -> Option<Browser> {
        Self::start_with(&[]).await
    }

    /// [`Browser::start`] with more Chromium flags.
    pub async fn start_with(extra: &[&str]) -> Option<Browser> {
        let chromium = std::env::var("FERRO_CHROMIUM").unwrap_or_else(|_| CHROMIUM.to_owned());
        if !found("chromedriver") || !PathBuf::from(&chromium).exists() {
            assert!(
                std::env::var_os("FERRO_REQUIRE_BROWSER").is_none(),
                "FERRO_REQUIRE_BROWSER is set but chromium or chromedriver is missing \
                 (apt-get install chromium chromium-driver)"
            );
            eprintln!("skipped: chromium or chromedriver is not installed");
            return None;
        }
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http.get(format!("{url}/status")).send().await.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().expect("profile directory");
        let args = vec![
            "--headless".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            // Without these Chromium keeps calling home, which this
            // network refuses.
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1280,900".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let args: Vec<String> = args
            .into_iter()
            .chain(extra.iter().map(|a| a.to_string()))
            .collect();
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": chromium, "args": args }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("a WebDriver session");
        Some(Browser {
            client,
            driver,
            _profile: profile,
        })
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    pub async fn text(&self, css: &str) -> String {
        self.client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .text()
            .await
            .expect("text")
    }

    pub async fn texts(&self, css: &str) -> Vec<String> {
        let mut out = Vec::new();
        for e in self.client.find_all(Locator::Css(css)).await.expect("find") {
            out.push(e.text().await.expect("text"));
        }
        out
    }

    pub async fn click(&self, css: &str) {
        self.client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .expect("click");
    }

    /// Clicks something that loads a new page (a link, a form's button)
    /// and waits until that page has loaded.
    pub async fn click_to(&self, css: &str) {
        self.eval("window.__ferro_old_page = true; return true")
            .await;
        self.click(css).await;
        self.wait_until(
            "the next page",
            "return window.__ferro_old_page === undefined && document.readyState === 'complete'",
        )
        .await;
    }

    pub async fn fill(&self, css: &str, value: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .send_keys(value)
            .await
            .expect("type");
    }

    pub async fn exists(&self, css: &str) -> bool {
        !self
            .client
            .find_all(Locator::Css(css))
            .await
            .expect("find")
            .is_empty()
    }

    pub async fn eval(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.expect("script")
    }

    pub async fn path(&self) -> String {
        let u = self.client.current_url().await.expect("url");
        match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_owned(),
        }
    }

    /// Waits until `script` returns true.
    pub async fn wait_until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.eval(script).await != json!(true) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a screenshot as `docs/screenshots/<name>.png` when
    /// `FERRO_UI_SCREENSHOTS` names that directory (so that a test run
    /// does not rewrite the committed pictures).
    pub async fn screenshot(&self, name: &str) {
        if !screenshots_wanted() {
            return;
        }
        let Some(dir) = std::env::var_os("FERRO_UI_SCREENSHOTS") else {
            return;
        };
        let png = self.client.screenshot().await.expect("screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::create_dir_all(&dir).expect("screenshot directory");
        std::fs::write(PathBuf::from(dir).join(format!("{name}.png")), png).expect("write");
    }

    /// Ends the session (Chromium exits); the driver goes on drop.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
