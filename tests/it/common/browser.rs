//! A real browser for the console's tests: Debian's `chromium`, headless,
//! driven through WebDriver by `chromedriver` (both installed by scripts/test
//! when missing). Each browser has its own driver on a free port and its own
//! empty profile; screenshots go to target/console-screenshots/.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use std::process::{Child, Command};

use super::{eventually, repo};

pub struct Browser {
    pub web: Client,
    driver: Child,
    _profile: tempfile::TempDir,
    base: String,
}

impl Browser {
    /// A browser for pages under `base` (`http://127.0.0.1:PORT`).
    pub async fn start(base: &str) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        // The flags keep Chromium from calling out: this machine's network
        // is closed, and a test must not depend on it.
        let caps = json!({
            "goog:chromeOptions": {
                "binary": std::env::var("CHROMIUM").unwrap_or("/usr/bin/chromium".into()),
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,1300",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        });
        // The driver's port is a free one picked here, which another process
        // may take before the driver binds it: then the driver exits, and a
        // new port is tried.
        let mut last = String::new();
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut driver =
                Command::new(std::env::var("CHROMEDRIVER").unwrap_or("chromedriver".into()))
                    .arg(format!("--port={port}"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("chromedriver (Debian's chromium-driver; scripts/test installs it)");
            let url = format!("http://127.0.0.1:{port}");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while tokio::time::Instant::now() < deadline {
                if let Ok(Some(status)) = driver.try_wait() {
                    last = format!("chromedriver on port {port} exited: {status}");
                    break;
                }
                let mut b =
                    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
                b.capabilities(caps.as_object().unwrap().clone());
                match b.connect(&url).await {
                    Ok(web) => {
                        return Browser {
                            web,
                            driver,
                            _profile: profile,
                            base: base.to_string(),
                        };
                    }
                    Err(e) => last = e.to_string(),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let _ = driver.kill();
            let _ = driver.wait();
        }
        panic!("chromedriver did not start a browser: {last}");
    }

    /// The element `css`; the test fails, naming the page, without one.
    pub async fn find(&self, css: &str) -> Element {
        match self.web.find(Locator::Css(css)).await {
            Ok(e) => e,
            Err(e) => panic!("no {css} on {}: {e}", self.path().await),
        }
    }

    pub async fn open(&self, path: &str) {
        self.web
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("open {path}: {e}"));
    }

    /// The text of the element `css`.
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap()
    }

    pub async fn has(&self, css: &str) -> bool {
        self.web.find(Locator::Css(css)).await.is_ok()
    }

    /// Clicks `css` (a link or a button that loads a page) and waits until
    /// the page it was on is gone, so what is read next is the new page.
    pub async fn click(&self, css: &str) {
        let old = self.find("html").await;
        self.find(css).await.click().await.unwrap();
        eventually(Duration::from_secs(30), format_args!("{css} loads a page"))
            .every(Duration::from_millis(50))
            .until(async || match old.attr("lang").await {
                Err(fantoccini::error::CmdError::Standard(e))
                    if e.error == fantoccini::error::ErrorStatus::StaleElementReference =>
                {
                    Ok(())
                }
                _ => Err("still the old page"),
            })
            .await;
    }

    /// Clicks `css`, a control that does not load a page (a checkbox).
    pub async fn toggle(&self, css: &str) {
        self.find(css).await.click().await.unwrap();
    }

    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    pub async fn select(&self, css: &str, value: &str) {
        self.find(css)
            .await
            .select_by_value(value)
            .await
            .unwrap_or_else(|e| panic!("{css} has no option {value}: {e}"));
    }

    /// The page's path and query.
    pub async fn path(&self) -> String {
        let u = self.web.current_url().await.unwrap();
        match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_string(),
        }
    }

    pub async fn html(&self) -> String {
        self.web.source().await.unwrap()
    }

    /// Signs in with `token` on the sign-in page.
    pub async fn sign_in(&self, token: &str) {
        self.open("/ui/login").await;
        self.fill("#token", token).await;
        self.click("#sign-in").await;
    }

    /// Saves the page as target/console-screenshots/NAME.png.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let dir = repo().join("target/console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{name}.png"));
        std::fs::write(&file, self.web.screenshot().await.unwrap()).unwrap();
        file
    }

    pub async fn close(self) {
        let _ = self.web.clone().close().await;
    }
}

impl Drop for Browser {
    /// Also after a failed test, which never reached `close`: the browser
    /// outlives its driver, so it is found by its own profile folder.
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::process::Command::new("pkill")
            .args(["-KILL", "-f", "--"])
            .arg(format!(
                "--user-data-dir={}",
                self._profile.path().display()
            ))
            .status();
    }
}
