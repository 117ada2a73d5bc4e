//! The `mozpool` client subcommands against a service on the virtual rack, with the exit
//! codes scripts rely on (0 ok, 1 refused/failed, 2 usage, 3 unreachable).

use crate::support::TestServer;

async fn run(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mozpool"))
        .args(args)
        .env_remove("MOZPOOL_URL")
        .env_remove("MOZPOOL_TOKEN")
        .output()
        .await
        .expect("run mozpool");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_renew_return_devices_relay() {
    let s = TestServer::start_rack(1, "").await;
    s.wait_all_ready(30).await;
    let url = format!("http://{}", s.addr);
    let (code, out, err) = run(&[
        "request",
        "any",
        "--image",
        "android",
        "--duration",
        "600",
        "--wait",
        "--timeout",
        "60",
        "--url",
        &url,
    ])
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    let last = out.lines().last().unwrap_or_default().to_owned();
    assert_eq!(last, "request 1 ready sim-0001", "{out}");
    let (code, out, _) = run(&["renew", "1", "120", "--url", &url]).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("request 1 expires "), "{out}");
    let (code, out, _) = run(&["devices", "--url", &url]).await;
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with("sim-0001") && l.contains("ready") && l.contains(" 1 ")),
        "{out}"
    );
    let (code, out, _) = run(&["relay", "sim-relay-1", "1", "1", "status", "--url", &url]).await;
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "bank 1, relay 1 status: on");
    let (code, _, _) = run(&["return", "1", "--url", &url]).await;
    assert_eq!(code, 0);
    // A refused call is 1, a usage error 2, an unreachable service 3.
    let (code, _, err) = run(&["return", "999", "--url", &url]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no request"), "{err}");
    let (code, _, _) = run(&["relay", "sim-relay-1", "33", "1", "status", "--url", &url]).await;
    assert_eq!(code, 2);
    // A bank the board does not have (4 banks) is refused by the service.
    let (code, _, err) = run(&["relay", "sim-relay-1", "9", "1", "status", "--url", &url]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("banks 1..=4"), "{err}");
    let (code, _, _) = run(&["devices", "--url", "http://127.0.0.1:9"]).await;
    assert_eq!(code, 3);
    // A request that fails is exit 1 with the reason.
    let (code, _, err) = run(&[
        "request",
        "any",
        "--image",
        "android",
        "--hardware-type",
        "nexus",
        "--wait",
        "--url",
        &url,
    ])
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("failed_device_not_found"), "{err}");
}
