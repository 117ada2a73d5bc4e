//! Crash safety: a `mozpool serve` child killed with SIGKILL while clients write loses none
//! of the writes it acknowledged, and the database opens cleanly afterwards.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn spawn(dir: &std::path::Path, port: u16) -> Child {
    let config = dir.join("mozpool.toml");
    std::fs::write(&config, "[log]\nlevel = \"warn\"\n").expect("config");
    Command::new(env!("CARGO_BIN_EXE_mozpool"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mozpool serve")
}

async fn wait_up(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if http
            .get(format!("{base}/api/health/"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("service did not come up at {base}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let mut child = spawn(dir.path(), port);
    wait_up(&http, &base).await;

    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for w in 0..8 {
        let http = http.clone();
        let base = base.clone();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let name = format!("crash-{w}-{i}");
                let r = http
                    .put(format!("{base}/api/device/{name}/"))
                    .body(json!({"comments": format!("written by writer {w}")}).to_string())
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 201 => acked.lock().expect("lock").push(name),
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    Err(_) => break, // the server died
                }
            }
        }));
    }
    // Let writes flow, then kill without warning.
    while acked.lock().expect("lock").len() < 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    for w in writers {
        w.await.expect("writer");
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() >= 200);

    // Restart on the same data and check every acknowledged write.
    let mut child = spawn(dir.path(), port);
    wait_up(&http, &base).await;
    let list: serde_json::Value = http
        .get(format!("{base}/api/device/list/"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let names: std::collections::HashSet<&str> = list["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let missing: Vec<&String> = acked
        .iter()
        .filter(|n| !names.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let health: serde_json::Value = http
        .get(format!("{base}/api/health/"))
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("json");
    assert_eq!(health["ok"], true);
    let _ = child.kill();
    let _ = child.wait();
}
