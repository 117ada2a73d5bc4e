//! Image files for flashing: the [`ImageRecipe`] format (partition → file *name*), the
//! controller's image store (`<store>/<image>/<file>`), and a size-limited LRU download
//! cache fed over plain HTTP from a build URL (MozPool's `b2gbase`), verified against
//! `<file>.sha256` when the build publishes one.
//!
//! Callers can never name a local path: every file is a plain name, checked here.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::domain::names::{ImageName, check_name};
use crate::hw::fastboot::FastbootStep;
use crate::hw::{Error, Result};

/// Largest `.sha256` file read.
const MAX_SHA_FILE: usize = 1024;

/// One step of a recipe: the domain's step, whose files are names in the image store or
/// build URL.
pub use crate::domain::model::FlashStep as RecipeStep;

/// What to flash for a named image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecipe {
    /// Image name (its directory in the store).
    pub name: ImageName,
    /// Steps, in order.
    pub steps: Vec<RecipeStep>,
}

impl ImageRecipe {
    /// Check every name a step puts on fastboot's command line.
    ///
    /// # Errors
    /// [`Error::BadFileName`] or [`Error::BadConfig`].
    pub fn validate(&self) -> Result<()> {
        for s in &self.steps {
            for (kind, v) in [("partition", s.partition()), ("slot", s.slot())] {
                if let Some(v) = v {
                    check_name(kind, v).map_err(|e| Error::BadConfig(e.to_string()))?;
                }
            }
            if let Some(f) = s.file() {
                check_file_name(f)?;
            }
        }
        Ok(())
    }
}

/// Refuse anything but a plain file name: no `/`, no `..`, not absolute, not hidden,
/// only `[A-Za-z0-9._:-]`.
///
/// # Errors
/// [`Error::BadFileName`].
pub fn check_file_name(name: &str) -> Result<()> {
    let plain = check_name("file name", name).is_ok()
        && !name.contains('/')
        && !name.contains("..")
        && !Path::new(name).is_absolute();
    if plain {
        Ok(())
    } else {
        Err(Error::BadFileName(name.chars().take(100).collect()))
    }
}

/// Where an image's files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// The controller's image store: `<store>/<image>/<file>`.
    Store,
    /// A build URL (plain `http://`): `<url>/<file>`, through the download cache.
    Url(String),
}

/// The controller's local image store.
#[derive(Debug, Clone)]
pub struct ImageStore {
    /// Root directory holding one directory per image.
    pub dir: PathBuf,
}

impl ImageStore {
    /// Path of `file` of `image`, which must exist inside the store (symlinks may not
    /// lead out of it).
    ///
    /// # Errors
    /// [`Error::BadFileName`], [`Error::Io`] when missing.
    pub fn path(&self, image: &ImageName, file: &str) -> Result<PathBuf> {
        check_file_name(file)?;
        let p = self.dir.join(image.as_str()).join(file);
        let real = std::fs::canonicalize(&p)
            .map_err(|e| Error::io(format!("image file {}", p.display()), e))?;
        let root = std::fs::canonicalize(&self.dir)
            .map_err(|e| Error::io(format!("image store {}", self.dir.display()), e))?;
        if !real.starts_with(&root) {
            return Err(Error::BadFileName(file.to_owned()));
        }
        Ok(p)
    }
}

/// Size-limited LRU cache of downloaded build files.
#[derive(Debug, Clone)]
pub struct DownloadCache {
    dir: PathBuf,
    max_total: u64,
    max_file: u64,
    client: Client<HttpConnector, Empty<Bytes>>,
}

fn dl_err(url: &str, msg: impl Into<String>) -> Error {
    Error::Download {
        url: url.to_owned(),
        msg: msg.into(),
    }
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

impl DownloadCache {
    /// A cache in `dir` (created) holding at most `max_total` bytes, refusing any file
    /// over `max_file` bytes.
    ///
    /// # Errors
    /// [`Error::Io`] when the directory cannot be created.
    pub fn new(dir: impl Into<PathBuf>, max_total: u64, max_file: u64) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("create cache {}", dir.display()), e))?;
        let client = Client::builder(TokioExecutor::new()).build_http();
        Ok(DownloadCache {
            dir,
            max_total,
            max_file,
            client,
        })
    }

    /// The cache directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Local path of `<base_url>/<file>`, downloading it if not cached. `progress` gets
    /// (bytes so far, total if known).
    ///
    /// # Errors
    /// [`Error::BadFileName`], [`Error::Download`], [`Error::TooLarge`],
    /// [`Error::ChecksumMismatch`], [`Error::Timeout`], [`Error::Io`].
    pub async fn fetch(
        &self,
        base_url: &str,
        file: &str,
        timeout: Duration,
        progress: impl FnMut(u64, Option<u64>) + Send,
    ) -> Result<PathBuf> {
        check_file_name(file)?;
        let url = format!("{}/{file}", base_url.trim_end_matches('/'));
        if !base_url.starts_with("http://") {
            return Err(dl_err(&url, "only plain http:// build URLs are supported"));
        }
        let key = hex(&Sha256::digest(url.as_bytes()));
        let path = self.dir.join(format!("{}-{file}", &key[..16]));
        if tokio::fs::metadata(&path).await.is_ok() {
            touch(&path).await;
            return Ok(path);
        }
        let started = std::time::Instant::now();
        match tokio::time::timeout(timeout, self.download(&url, &path, progress)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::Timeout {
                    op: format!("download {url}"),
                    after: started.elapsed(),
                });
            }
        }
        self.evict(&path).await?;
        Ok(path)
    }

    async fn get(&self, url: &str) -> Result<hyper::Response<hyper::body::Incoming>> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| dl_err(url, format!("bad URL: {e}")))?;
        self.client
            .get(uri)
            .await
            .map_err(|e| dl_err(url, format!("request failed: {e}")))
    }

    /// The published digest, if the build has `<file>.sha256`.
    async fn published_sha(&self, url: &str) -> Result<Option<String>> {
        let sha_url = format!("{url}.sha256");
        let resp = self.get(&sha_url).await?;
        match resp.status().as_u16() {
            404 => return Ok(None),
            200 => {}
            s => return Err(dl_err(&sha_url, format!("HTTP status {s}"))),
        }
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| dl_err(&sha_url, e.to_string()))?;
            if let Some(d) = frame.data_ref() {
                buf.extend_from_slice(d);
                if buf.len() > MAX_SHA_FILE {
                    return Err(Error::TooLarge {
                        op: format!("download {sha_url}"),
                        limit: MAX_SHA_FILE as u64,
                    });
                }
            }
        }
        let text = String::from_utf8_lossy(&buf);
        let digest = text
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(dl_err(&sha_url, "not a SHA-256 digest"));
        }
        Ok(Some(digest))
    }

    async fn download(
        &self,
        url: &str,
        path: &Path,
        mut progress: impl FnMut(u64, Option<u64>) + Send,
    ) -> Result<()> {
        let expected = self.published_sha(url).await?;
        let resp = self.get(url).await?;
        if resp.status().as_u16() != 200 {
            return Err(dl_err(
                url,
                format!("HTTP status {}", resp.status().as_u16()),
            ));
        }
        let total = resp
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let too_large = || Error::TooLarge {
            op: format!("download {url}"),
            limit: self.max_file,
        };
        if total.is_some_and(|t| t > self.max_file) {
            return Err(too_large());
        }
        let tmp = tempfile::Builder::new()
            .prefix(".part-")
            .tempfile_in(&self.dir)
            .map_err(|e| Error::io("create download file", e))?;
        let (std_file, tmp_path) = tmp.into_parts();
        let mut out = tokio::fs::File::from_std(std_file);
        let mut hasher = Sha256::new();
        let mut got: u64 = 0;
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| dl_err(url, e.to_string()))?;
            if let Some(d) = frame.data_ref() {
                got += d.len() as u64;
                if got > self.max_file {
                    return Err(too_large());
                }
                hasher.update(d);
                out.write_all(d)
                    .await
                    .map_err(|e| Error::io("write download", e))?;
                progress(got, total);
            }
        }
        if total.is_some_and(|t| t != got) {
            return Err(dl_err(url, format!("short body: {got} of {total:?} bytes")));
        }
        out.flush()
            .await
            .map_err(|e| Error::io("write download", e))?;
        drop(out);
        let digest = hex(&hasher.finalize());
        if let Some(exp) = expected
            && exp != digest
        {
            return Err(Error::ChecksumMismatch {
                file: url.rsplit('/').next().unwrap_or(url).to_owned(),
                expected: exp,
                got: digest,
            });
        }
        tmp_path
            .persist(path)
            .map_err(|e| Error::io("store download", e.error))?;
        Ok(())
    }

    /// Remove least-recently-used files until the cache fits, keeping `keep`.
    async fn evict(&self, keep: &Path) -> Result<()> {
        let dir = self.dir.clone();
        let keep = keep.to_path_buf();
        let max = self.max_total;
        tokio::task::spawn_blocking(move || evict_blocking(&dir, &keep, max))
            .await
            .map_err(|e| Error::io("cache eviction", std::io::Error::other(e.to_string())))?
    }
}

async fn touch(path: &Path) {
    let p = path.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || {
        std::fs::File::options()
            .write(true)
            .open(&p)
            .and_then(|f| f.set_modified(SystemTime::now()))
    })
    .await;
}

fn evict_blocking(dir: &Path, keep: &Path, max_total: u64) -> Result<()> {
    let mut files = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io("read cache", e))?;
    for e in rd.flatten() {
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        if let Ok(m) = e.metadata()
            && m.is_file()
        {
            files.push((
                m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                m.len(),
                e.path(),
            ));
        }
    }
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    files.sort();
    for (_, len, p) in files {
        if total <= max_total {
            break;
        }
        if p == keep {
            continue;
        }
        if std::fs::remove_file(&p).is_ok() {
            tracing::info!(file = %p.display(), "evicted from image cache");
            total -= len;
        }
    }
    Ok(())
}

/// Resolves recipe files to local paths from the store or a build URL.
#[derive(Debug, Clone)]
pub struct ImageFiles {
    /// Local image store.
    pub store: ImageStore,
    /// Download cache for build URLs.
    pub cache: DownloadCache,
}

impl ImageFiles {
    /// Fastboot steps with local paths for `recipe`; `progress` gets (file, bytes, total).
    ///
    /// # Errors
    /// As [`ImageStore::path`] and [`DownloadCache::fetch`].
    pub async fn steps(
        &self,
        recipe: &ImageRecipe,
        source: &ImageSource,
        timeout: Duration,
        mut progress: impl FnMut(&str, u64, Option<u64>) + Send,
    ) -> Result<Vec<FastbootStep>> {
        recipe.validate()?;
        let mut out = Vec::with_capacity(recipe.steps.len());
        for s in &recipe.steps {
            let step = match s {
                RecipeStep::Flash { file, .. } => {
                    let path = match source {
                        ImageSource::Store => self.store.path(&recipe.name, file)?,
                        ImageSource::Url(base) => {
                            self.cache
                                .fetch(base, file, timeout, |n, t| progress(file, n, t))
                                .await?
                        }
                    };
                    s.try_map_file(|_| Ok::<_, Error>(path))?
                }
                // Not called: these steps have no file.
                other => other.try_map_file(|_| Ok::<_, Error>(PathBuf::new()))?,
            };
            out.push(step);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_plain() {
        for ok in ["boot.img", "system-2024.img", "userdata_1.img"] {
            assert!(check_file_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "/etc/passwd",
            ".hidden",
            "-w",
            "a..b",
            "a b",
            "x\0",
        ] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn recipes_refuse_paths_and_options() {
        let recipe = |step: RecipeStep| ImageRecipe {
            name: "b2g".parse().expect("name"),
            steps: vec![step],
        };
        let flash = |file: &str| RecipeStep::Flash {
            partition: "boot".into(),
            file: file.into(),
        };
        assert!(recipe(flash("boot.img")).validate().is_ok());
        assert!(matches!(
            recipe(flash("../../etc/shadow")).validate(),
            Err(Error::BadFileName(_))
        ));
        assert!(
            recipe(RecipeStep::SetActive { slot: "-w".into() })
                .validate()
                .is_err()
        );
        assert!(recipe(RecipeStep::Wipe).validate().is_ok());
    }
}
