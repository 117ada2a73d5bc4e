//! The crate's layers point down only. Each top-level folder of `src/` is one layer; a file
//! may name (`crate::x`) its own layer and the layers below it, never one above. The order is
//! stated here and in `docs/architecture.md` (checked to agree), and only `src/storage/` may
//! name redb or the store's tables.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layers, bottom first.
const LAYERS: &[&str] = &[
    "domain",
    "storage",
    "hw",
    "lifeguard",
    "pool",
    "inventory",
    "http",
    "app",
    "cli",
];

fn rank(layer: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == layer)
}

/// The code of a Rust file with comments removed (line comments, doc comments, block
/// comments), so a doc link or a sentence does not count as an import. String literals are
/// kept: a path inside a string is rare and harmless to flag.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("//") {
            rest = after.find('\n').map_or("", |i| &after[i..]);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.find("*/").map_or("", |i| &after[i + 2..]);
        } else if rest.starts_with('"') {
            // Skip a string literal whole, so `"//"` inside it is not a comment.
            let bytes = rest.as_bytes();
            let mut i = 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            let end = (i + 1).min(rest.len());
            out.push_str(&rest[..end]);
            rest = &rest[end..];
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// One import against the order: (file, line, the path named, why).
type Violation = (String, usize, String);

/// Check one file of layer `layer` (its path relative to `src/`); `is_layer_root` is true for
/// a layer's `mod.rs`, where `super::` is the crate root.
fn check_file(rel: &str, text: &str) -> Vec<Violation> {
    let layer = rel.split('/').next().unwrap_or("").trim_end_matches(".rs");
    let Some(own) = rank(layer) else {
        return Vec::new();
    };
    let is_layer_root = rel.matches('/').count() == 1 && rel.ends_with("/mod.rs");
    let code = strip_comments(text);
    let mut found = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let mut prefixes = vec!["crate::"];
        if is_layer_root {
            prefixes.push("super::");
        }
        for prefix in prefixes {
            for (at, _) in line.match_indices(prefix) {
                let before = line[..at].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                let target: String = line[at + prefix.len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                match rank(&target) {
                    Some(r) if r > own => found.push((
                        rel.to_owned(),
                        n + 1,
                        format!("{layer} names {prefix}{target}, a layer above it"),
                    )),
                    Some(_) => {}
                    None => found.push((
                        rel.to_owned(),
                        n + 1,
                        format!("{layer} names {prefix}{target}, which is not a layer"),
                    )),
                }
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn imports_point_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut per_layer: BTreeMap<String, usize> = BTreeMap::new();
    for path in &files {
        let rel = path
            .strip_prefix(&src)
            .expect("under src")
            .to_string_lossy()
            .replace('\\', "/");
        let top = rel.split('/').next().unwrap_or("");
        if !rel.contains('/') {
            // lib.rs, main.rs, build.rs: the crate root, above every layer.
            assert!(
                ["lib.rs", "main.rs", "build.rs"].contains(&top),
                "src/{rel} is a loose file; every module belongs to a layer folder"
            );
            continue;
        }
        assert!(
            rank(top).is_some(),
            "src/{top}/ is not a layer; add it to LAYERS (and docs/architecture.md) or move it"
        );
        *per_layer.entry(top.to_owned()).or_default() += 1;
        let text = std::fs::read_to_string(path).expect("read file");
        violations.extend(check_file(&rel, &text));
    }
    assert_eq!(
        per_layer.len(),
        LAYERS.len(),
        "every layer has files: {per_layer:?}"
    );
    let report: Vec<String> = violations
        .iter()
        .map(|(f, l, why)| format!("src/{f}:{l}: {why}"))
        .collect();
    assert!(
        report.is_empty(),
        "imports against the layer order:\n{}",
        report.join("\n")
    );
}

#[test]
fn a_planted_upward_import_is_found() {
    let planted = "//! A storage module.\nuse crate::domain::clock::Millis;\nuse crate::pool::RequestState;\n";
    let v = check_file("storage/requests.rs", planted);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].1, 3);
    // Inline paths count too, and so does `super::` from a layer's root module.
    let v = check_file(
        "hw/sut.rs",
        "fn f() { crate::lifeguard::Lifeguard::touch(); }\n",
    );
    assert_eq!(v.len(), 1, "{v:?}");
    let v = check_file("pool/mod.rs", "use super::http::Route;\n");
    assert_eq!(v.len(), 1, "{v:?}");
    // Comments and downward or sideways imports do not.
    let ok = "/// See [`crate::app::App`].\nuse crate::storage::Store;\nuse crate::pool::x; // crate::cli\n";
    assert!(check_file("pool/driver.rs", ok).is_empty());
}

#[test]
fn architecture_doc_states_the_same_order() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md"))
            .expect("docs/architecture.md");
    let line = doc
        .lines()
        .find(|l| l.starts_with("Layer order, bottom first:"))
        .expect("docs/architecture.md has a line starting 'Layer order, bottom first:'");
    let named: Vec<String> = line
        .split(':')
        .nth(1)
        .unwrap_or("")
        .split(',')
        .map(|s| s.trim().trim_matches(|c| c == '`' || c == '.').to_owned())
        .collect();
    assert_eq!(
        named, LAYERS,
        "docs/architecture.md's layer order differs from the test's"
    );
}
