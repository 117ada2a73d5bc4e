//! Image files: store lookup with path-injection refusal, and the download cache against
//! a tiny hyper HTTP server on loopback (checksums, size limit, LRU eviction).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use mozpool::hw::Error;
use mozpool::hw::images::{
    DownloadCache, ImageFiles, ImageRecipe, ImageSource, ImageStore, RecipeStep,
};
use mozpool::hw::sim::fastboot::hex_digest;
use tokio::net::TcpListener;

type Files = Arc<Mutex<HashMap<String, Vec<u8>>>>;

/// Serve `files` by path; count requests per path.
async fn server(files: Files) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let hits = Arc::new(Mutex::new(Vec::new()));
    let h2 = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let (files, hits) = (files.clone(), h2.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let path = req.uri().path().to_owned();
                    hits.lock().expect("lock").push(path.clone());
                    let body = files.lock().expect("lock").get(&path).cloned();
                    async move {
                        Ok::<_, Infallible>(match body {
                            Some(b) => Response::new(Full::new(Bytes::from(b))),
                            None => {
                                let mut r = Response::new(Full::new(Bytes::new()));
                                *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                                r
                            }
                        })
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, hits)
}

fn files(entries: &[(&str, Vec<u8>)]) -> Files {
    Arc::new(Mutex::new(
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    ))
}

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn download_verifies_sha256_and_caches() {
    let data = vec![42u8; 3000];
    let f = files(&[
        ("/build/boot.img", data.clone()),
        (
            "/build/boot.img.sha256",
            format!("{}  boot.img\n", hex_digest(&data)).into_bytes(),
        ),
        ("/build/system.img", b"no checksum published".to_vec()),
    ]);
    let (addr, hits) = server(f).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = DownloadCache::new(dir.path().join("cache"), 1 << 20, 1 << 20).expect("cache");
    let base = format!("http://{addr}/build/");
    let mut seen = Vec::new();
    let p = cache
        .fetch(&base, "boot.img", T, |n, t| seen.push((n, t)))
        .await
        .expect("download");
    assert_eq!(std::fs::read(&p).expect("read"), data);
    assert_eq!(seen.last(), Some(&(3000, Some(3000))));
    let n = hits.lock().expect("lock").len();
    let p2 = cache
        .fetch(&base, "boot.img", T, |_, _| {})
        .await
        .expect("hit");
    assert_eq!(p, p2);
    assert_eq!(
        hits.lock().expect("lock").len(),
        n,
        "cache hit must not download"
    );
    let p3 = cache
        .fetch(&base, "system.img", T, |_, _| {})
        .await
        .expect("no sha");
    assert_eq!(std::fs::read(p3).expect("read"), b"no checksum published");
}

#[tokio::test]
async fn checksum_mismatch_leaves_nothing_in_the_cache() {
    let f = files(&[
        ("/b/boot.img", b"tampered".to_vec()),
        ("/b/boot.img.sha256", hex_digest(b"original").into_bytes()),
    ]);
    let (addr, _) = server(f).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = DownloadCache::new(dir.path(), 1 << 20, 1 << 20).expect("cache");
    let e = cache
        .fetch(&format!("http://{addr}/b"), "boot.img", T, |_, _| {})
        .await
        .expect_err("mismatch");
    assert!(matches!(e, Error::ChecksumMismatch { .. }), "{e}");
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
}

#[tokio::test]
async fn size_limit_missing_file_and_bad_urls() {
    let f = files(&[("/b/big.img", vec![0u8; 2000])]);
    let (addr, _) = server(f).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = DownloadCache::new(dir.path(), 1 << 20, 1000).expect("cache");
    let base = format!("http://{addr}/b");
    let e = cache
        .fetch(&base, "big.img", T, |_, _| {})
        .await
        .expect_err("too big");
    assert!(matches!(e, Error::TooLarge { limit: 1000, .. }), "{e}");
    let e = cache
        .fetch(&base, "nope.img", T, |_, _| {})
        .await
        .expect_err("404");
    assert!(matches!(e, Error::Download { .. }), "{e}");
    assert!(e.to_string().contains("404"), "{e}");
    let e = cache
        .fetch("file:///etc", "passwd", T, |_, _| {})
        .await
        .expect_err("scheme");
    assert!(matches!(e, Error::Download { .. }), "{e}");
    for bad in ["../etc/passwd", "/etc/passwd", "a/b", "..", ".x"] {
        let e = cache
            .fetch(&base, bad, T, |_, _| {})
            .await
            .expect_err("injection");
        assert!(matches!(e, Error::BadFileName(_)), "{bad}: {e}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
}

#[tokio::test]
async fn cache_evicts_least_recently_used() {
    let f = files(&[
        ("/b/a.img", vec![1u8; 100]),
        ("/b/b.img", vec![2u8; 100]),
        ("/b/c.img", vec![3u8; 100]),
    ]);
    let (addr, _) = server(f).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = DownloadCache::new(dir.path(), 250, 1000).expect("cache");
    let base = format!("http://{addr}/b");
    let a = cache.fetch(&base, "a.img", T, |_, _| {}).await.expect("a");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let b = cache.fetch(&base, "b.img", T, |_, _| {}).await.expect("b");
    tokio::time::sleep(Duration::from_millis(20)).await;
    cache
        .fetch(&base, "a.img", T, |_, _| {})
        .await
        .expect("a again (hit)");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let c = cache.fetch(&base, "c.img", T, |_, _| {}).await.expect("c");
    assert!(a.exists(), "recently used a kept");
    assert!(!b.exists(), "least recently used b evicted");
    assert!(c.exists(), "new file kept");
}

#[tokio::test]
async fn store_and_url_sources_resolve_recipes_and_refuse_escapes() {
    let f = files(&[("/build/boot.img", b"from url".to_vec())]);
    let (addr, _) = server(f).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store_dir = dir.path().join("store");
    std::fs::create_dir_all(store_dir.join("b2g")).expect("mkdir");
    std::fs::write(store_dir.join("b2g/boot.img"), b"from store").expect("write");
    std::fs::write(dir.path().join("secret"), b"outside").expect("write");
    std::os::unix::fs::symlink(dir.path().join("secret"), store_dir.join("b2g/link.img"))
        .expect("symlink");
    let files = ImageFiles {
        store: ImageStore {
            dir: store_dir.clone(),
        },
        cache: DownloadCache::new(dir.path().join("cache"), 1 << 20, 1 << 20).expect("cache"),
    };
    let mut recipe = ImageRecipe {
        name: "b2g".parse().expect("name"),
        steps: vec![RecipeStep::Flash {
            partition: "boot".into(),
            file: "boot.img".into(),
        }],
    };
    let steps = files
        .steps(&recipe, &ImageSource::Store, T, |_, _, _| {})
        .await
        .expect("store");
    assert_eq!(
        std::fs::read(flashed_file(&steps[0])).expect("read"),
        b"from store"
    );
    let url = ImageSource::Url(format!("http://{addr}/build"));
    let steps = files
        .steps(&recipe, &url, T, |_, _, _| {})
        .await
        .expect("url");
    assert_eq!(
        std::fs::read(flashed_file(&steps[0])).expect("read"),
        b"from url"
    );

    recipe.steps[0] = flash_step("link.img");
    let e = files
        .steps(&recipe, &ImageSource::Store, T, |_, _, _| {})
        .await
        .expect_err("symlink escape");
    assert!(matches!(e, Error::BadFileName(_)), "{e}");
    recipe.steps[0] = flash_step("../../secret");
    let e = files
        .steps(&recipe, &ImageSource::Store, T, |_, _, _| {})
        .await
        .expect_err("traversal");
    assert!(matches!(e, Error::BadFileName(_)), "{e}");
    recipe.steps[0] = flash_step("missing.img");
    let e = files
        .steps(&recipe, &ImageSource::Store, T, |_, _, _| {})
        .await
        .expect_err("missing");
    assert!(matches!(e, Error::Io { .. }), "{e}");
}

fn flashed_file(s: &mozpool::hw::fastboot::FastbootStep) -> std::path::PathBuf {
    match s {
        mozpool::hw::fastboot::FastbootStep::Flash { file, .. } => file.clone(),
        other => panic!("not a flash step: {other:?}"),
    }
}

fn flash_step(file: &str) -> RecipeStep {
    RecipeStep::Flash {
        partition: "boot".into(),
        file: file.into(),
    }
}
