//! Inventory CRUD through the API, in the original's JSON shapes where it had them.

use reqwest::Method;
use serde_json::json;

use crate::support::{TWO_DEVICES, TestServer};

#[tokio::test]
async fn configured_devices_are_listed_in_the_original_shape() {
    let s = TestServer::start(TWO_DEVICES).await;
    let (status, body) = s.get("/api/device/list/").await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"devices": ["panda-1", "panda-2"]}));
    let (_, body) = s.get("/api/device/list/?details=1").await;
    let d = &body["devices"][0];
    for key in [
        "id",
        "name",
        "fqdn",
        "inventory_id",
        "mac_address",
        "imaging_server",
        "relay_info",
        "state",
        "comments",
        "image",
        "boot_config",
        "environment",
        "request_id",
    ] {
        assert!(d.get(key).is_some(), "missing {key} in {d}");
    }
    assert_eq!(d["name"], "panda-1");
    assert_eq!(d["environment"], "prod");
    assert_eq!(
        d["processor"], "armv7",
        "processor defaults to the hardware type's"
    );
    assert!(d["state"].is_string(), "{d}");
    assert_eq!(d["imaging_server"], "localhost");
}

#[tokio::test]
async fn device_create_update_retire() {
    let s = TestServer::start(TWO_DEVICES).await;
    let (status, d) = s
        .put(
            "/api/device/nexus-1/",
            json!({"hardware_type": "nexus", "pool": "mobile", "sut": "10.0.0.9:20701"}),
        )
        .await;
    assert_eq!(status, 201, "{d}");
    assert_eq!(d["fqdn"], "10.0.0.9");
    let (status, d) = s
        .put("/api/device/nexus-1/", json!({"os_version": "4.4"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(d["pool"], "mobile", "fields not given are kept");
    assert_eq!(d["os_version"], "4.4");
    let (status, _) = s
        .put("/api/device/nexus-1/", json!({"sut": "nohost"}))
        .await;
    assert_eq!(status, 400);
    let (status, _) = s
        .put("/api/device/nexus-1/", json!({"colour": "red"}))
        .await;
    assert_eq!(status, 400);
    let (status, _) = s.send(Method::DELETE, "/api/device/nexus-1/", None).await;
    assert_eq!(status, 200);
    let (_, list) = s.get("/api/device/list/").await;
    assert!(
        !list["devices"]
            .as_array()
            .expect("list")
            .contains(&json!("nexus-1"))
    );
    let (_, list) = s.get("/api/device/list/?include_retired=1").await;
    assert!(
        list["devices"]
            .as_array()
            .expect("list")
            .contains(&json!("nexus-1"))
    );
    // History of a retired device stays readable.
    let (status, log) = s.get("/api/device/nexus-1/log/").await;
    assert_eq!(status, 200);
    let messages: Vec<&str> = log["log"]
        .as_array()
        .expect("log")
        .iter()
        .filter_map(|r| r["message"].as_str())
        .collect();
    assert!(
        messages.iter().any(|m| m.contains("device created")),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("os_version: (none) -> 4.4")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("retired")),
        "{messages:?}"
    );
}

#[tokio::test]
async fn images_environments_hardware_types() {
    let s = TestServer::start(TWO_DEVICES).await;
    let (_, images) = s.get("/api/image/list/").await;
    assert_eq!(images["images"][0]["name"], "b2g");
    assert_eq!(images["images"][0]["boot_config_keys"], json!(["b2gbase"]));
    assert_eq!(images["images"][0]["has_sut_agent"], true);
    let (status, _) = s
        .put("/api/image/self-test/", json!({"hidden": true}))
        .await;
    assert_eq!(status, 201);
    let (_, images) = s.get("/api/image/list/").await;
    assert_eq!(
        images["images"].as_array().map(Vec::len),
        Some(1),
        "hidden images are not listed"
    );
    let (status, img) = s.get("/api/image/self-test/details/").await;
    assert_eq!((status, img["hidden"].clone()), (200, json!(true)));
    let (status, _) = s
        .put(
            "/api/image/evil/",
            json!({"steps": [{"partition": "boot", "file": "/etc/shadow"}]}),
        )
        .await;
    assert_eq!(status, 400, "image files are names, never paths");

    let (_, envs) = s.get("/api/environment/list/").await;
    assert_eq!(envs, json!({"environments": ["prod"]}));
    let (status, _) = s
        .put(
            "/api/environment/staging/",
            json!({"description": "spare rack"}),
        )
        .await;
    assert_eq!(status, 201);
    let (_, envs) = s.get("/api/environment/list/").await;
    assert_eq!(envs, json!({"environments": ["prod", "staging"]}));

    let (status, _) = s
        .put("/api/hardware-type/nexus/", json!({"processor": "armv7"}))
        .await;
    assert_eq!(status, 201);
    let (_, types) = s.get("/api/hardware-type/list/").await;
    assert_eq!(types["hardware_types"].as_array().map(Vec::len), Some(2));
    let (status, _) = s
        .send(Method::DELETE, "/api/hardware-type/nexus/", None)
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn device_log_limits_and_status_shape() {
    let s = TestServer::start(TWO_DEVICES).await;
    for i in 0..5 {
        let (status, _) = s
            .post(
                "/api/device/panda-1/set-comments/",
                json!({"comments": format!("c{i}")}),
            )
            .await;
        assert_eq!(status, 200);
    }
    let (_, log) = s.get("/api/device/panda-1/log/?limit=2").await;
    let rows = log["log"].as_array().expect("rows");
    assert_eq!(rows.len(), 2);
    assert!(
        rows[0]["id"].as_u64() < rows[1]["id"].as_u64(),
        "oldest first, as the original"
    );
    for key in ["id", "timestamp", "source", "message"] {
        assert!(rows[0].get(key).is_some(), "{key}");
    }
    let (_, status) = s.get("/api/device/panda-1/status/").await;
    // Unwired devices leave `new` for self-test, which fails for want of a relay.
    assert!(status["state"].is_string(), "{status}");
    assert!(status["log"].as_array().is_some_and(|l| !l.is_empty()));
    let (_, state) = s.get("/api/device/panda-1/state/").await;
    assert!(state["state"].is_string(), "{state}");
}

#[tokio::test]
async fn version_and_health() {
    let s = TestServer::start(TWO_DEVICES).await;
    let (status, v) = s.get("/api/version/").await;
    assert_eq!(status, 200);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let (status, h) = s.get("/api/health/").await;
    assert_eq!(status, 200);
    assert_eq!(h["storage"]["ok"], true);
}

/// The original web UI's "PXE boot" (a power-cycle with `pxe_config`): a PXE config is an
/// image here, so booting one is flashing it, answered exactly as the flash call; an
/// unknown name is a clear 404.
#[tokio::test]
async fn pxe_boot_of_an_image_flashes_it() {
    let s = TestServer::start(TWO_DEVICES).await;
    let (status, body) = s
        .post(
            "/api/device/panda-1/power-cycle/",
            json!({"pxe_config": "nope", "boot_config": ""}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("no pxe_config named nope")
                && e.contains("/api/bmm/pxe_config/list/")),
        "{body}"
    );
    // Bad names are the same 404, not a parse error.
    let (status, _) = s
        .post(
            "/api/device/panda-1/power-cycle/",
            json!({"pxe_config": "../x"}),
        )
        .await;
    assert_eq!(status, 404);
    // A known one: the same answer as flashing it, for the same device and boot config.
    let pxe = s
        .post(
            "/api/device/panda-2/power-cycle/",
            json!({"pxe_config": "b2g", "boot_config": "{\"b2gbase\": \"http://x/\"}"}),
        )
        .await;
    let log = s.get("/api/device/panda-2/log/").await.1.to_string();
    let flash = s
        .post(
            "/api/device/panda-1/flash/",
            json!({"image": "b2g", "boot_config": "{\"b2gbase\": \"http://x/\"}"}),
        )
        .await;
    assert_eq!(pxe.0, flash.0, "{pxe:?} vs {flash:?}");
    if pxe.0 == 200 {
        assert!(log.contains("b2g"), "the flash of b2g is logged: {log}");
    } else {
        assert_eq!(pxe.1["code"], flash.1["code"], "{pxe:?} vs {flash:?}");
    }
    // boot_config alone is ignored (a plain power cycle), as the original did.
    let (a, _) = s
        .post(
            "/api/device/panda-1/power-cycle/",
            json!({"boot_config": "x"}),
        )
        .await;
    let (b, _) = s.post("/api/device/panda-1/power-cycle/", json!({})).await;
    assert_eq!(a, b);
    s.stop().await;
}

/// The original web UI's `bmm.html` lists PXE configs; here they are the images, in the
/// original's JSON shape.
#[tokio::test]
async fn pxe_configs_are_the_images_in_the_original_shape() {
    let s = TestServer::start(TWO_DEVICES).await;
    let (status, _) = s
        .put(
            "/api/image/android/",
            json!({
                "description": "AOSP userdebug",
                "agent": "adb",
                "steps": [{"partition": "system", "file": "system.img"}, {"action": "wipe"}],
            }),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = s
        .put(
            "/api/image/a-hidden/",
            json!({"hidden": true, "steps": [{"partition": "boot", "file": "boot.img"}]}),
        )
        .await;
    assert_eq!(status, 201);

    let (status, body) = s.get("/api/bmm/pxe_config/list/").await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"pxe_configs": ["a-hidden", "android", "b2g"]}));
    // What bmm.html asks for: hidden images are not active.
    let (status, body) = s.get("/api/bmm/pxe_config/list/?active_only=1").await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"pxe_configs": ["android", "b2g"]}));
    let (_, body) = s.get("/api/bmm/pxe_config/list/?active_only=0").await;
    assert_eq!(body["pxe_configs"].as_array().map(Vec::len), Some(3));

    let (status, body) = s.get("/api/bmm/pxe_config/android/details/").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"details": {
            "name": "android",
            "description": "AOSP userdebug",
            "contents": "# mozpool image android: flashed with fastboot, not booted over PXE\n\
                         # boot config keys: (none)\n\
                         # agent: adb\n\
                         fastboot flash system system.img\n\
                         fastboot -w\n",
            "active": true,
        }})
    );
    let (_, body) = s.get("/api/bmm/pxe_config/a-hidden/details/").await;
    assert_eq!(body["details"]["active"], false);
    assert_eq!(body["details"]["description"], "");
    let (_, body) = s.get("/api/bmm/pxe_config/b2g/details/").await;
    let contents = body["details"]["contents"].as_str().expect("contents");
    assert!(
        contents.contains("# boot config keys: b2gbase\n"),
        "{contents}"
    );
    assert!(
        contents.contains("fastboot flash boot boot.img\n"),
        "{contents}"
    );

    // The original answered 500 here; a clear 404 is better and breaks no client.
    let (status, body) = s.get("/api/bmm/pxe_config/nothing/details/").await;
    assert_eq!(status, 404);
    assert_eq!(body["code"], "not_found", "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|m| m.contains("nothing")),
        "{body}"
    );
}
