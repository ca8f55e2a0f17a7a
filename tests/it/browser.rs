//! Headless Chromium for the console's tests and benchmarks: Debian's `/usr/bin/chromium`
//! driven through `/usr/bin/chromedriver` (WebDriver, fantoccini). Nothing here downloads a
//! browser: when either binary is missing it says how to install them.
//!
//! Shared by the integration tests and the benchmarks (`benches/common/mod.rs` includes this
//! file with `#[path]`), so it uses only dev-dependencies and no other test module.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};

/// chromedriver on a free local port, killed on drop.
pub struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    /// Starts chromedriver and waits (up to 30 s) until it answers.
    pub async fn start() -> Driver {
        for bin in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: apt-get install -y chromium chromium-driver (.ci/run does it)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let d = Driver { child, port };
        let status = format!("http://127.0.0.1:{port}/status");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while reqwest::get(&status).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        d
    }

    /// A new headless browser session (1280×900), downloading into `downloads` when given.
    pub async fn client(&self, downloads: Option<&Path>) -> Client {
        let mut opts = json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,900", "--no-first-run", "--disable-extensions"],
        });
        if let Some(dir) = downloads {
            opts["prefs"] = json!({
                "download.default_directory": dir.to_str().unwrap(),
                "download.prompt_for_download": false,
            });
        }
        let Value::Object(caps) = json!({ "goog:chromeOptions": opts }) else {
            unreachable!()
        };
        // Plain HTTP to the local chromedriver: no TLS stack needed.
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .unwrap()
    }
}
