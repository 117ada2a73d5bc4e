//! Shared test harness: a real service on 127.0.0.1:0 with a temporary data directory.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use mozpool::app::App;
use mozpool::clock::SystemClock;
use mozpool::config::Config;
use serde_json::Value;

/// A running in-process service.
pub struct TestServer {
    pub app: App,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    /// Start a service with this config text (data dir and listen address are set here).
    pub async fn start(config_text: &str) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(config_text, dir).await
    }

    /// Start a service on an existing data directory.
    pub async fn start_in(config_text: &str, dir: tempfile::TempDir) -> TestServer {
        let mut config = Config::parse(Path::new("test.toml"), config_text).expect("test config");
        config.server.data_dir = dir.path().to_owned();
        config.server.listen = "127.0.0.1:0".parse().expect("addr");
        let app = App::open(config, Arc::new(SystemClock))
            .await
            .expect("app opens");
        let listener = app.bind().await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(app.clone().run(listener));
        TestServer {
            app,
            addr,
            dir,
            http: reqwest::Client::new(),
            task,
        }
    }

    /// Stop the service and wait for it; returns the data directory for a restart.
    pub async fn stop(self) -> tempfile::TempDir {
        self.app.shutdown.cancel();
        let _ = self.task.await;
        // The store's writer thread exits when the last handle drops.
        drop(self.app);
        self.dir
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.expect("GET");
        decode(r).await
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        decode(req.send().await.expect("request")).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }
}

pub async fn decode(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let bytes = r.bytes().await.expect("body");
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    (status, v)
}

/// A config with two devices.
pub const TWO_DEVICES: &str = r#"
[[hardware_types]]
name = "panda"
processor = "armv7"

[[environments]]
name = "prod"

[[images]]
name = "b2g"
boot_config_keys = ["b2gbase"]
has_sut_agent = true
steps = [{ partition = "boot", file = "boot.img" }]

[[devices]]
name = "panda-1"
hardware_type = "panda"
environment = "prod"

[[devices]]
name = "panda-2"
hardware_type = "panda"
"#;
