//! The crate's layers point down only. Each top-level folder of `src/` is one layer; a file
//! may name (`crate::x`) its own layer and the layers below it, never one above. The order is
//! stated here and in `docs/architecture.md` (checked to agree), and only `src/storage/` may
//! name redb or the store's tables: every other layer reads through `storage::Snapshot` and
//! writes through typed storage functions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layers, bottom first.
const LAYERS: &[&str] = &[
    "domain",
    "storage",
    "cluster",
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
    strip(text, true)
}

/// The code of a Rust file without comments and without the text of string literals (each
/// becomes `""`, keeping its line breaks): a file name such as `"mozpool.redb"` or a sentence
/// in a message is not code naming redb.
fn code_only(text: &str) -> String {
    strip(text, false)
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Length of the raw string literal (`r"…"`, `r#"…"#`, `br"…"`) at the start of `rest`, if
/// one starts there; `prev` is the character before it (an identifier character means the
/// `r` ends a name instead).
fn raw_string_len(rest: &str, prev: char) -> Option<usize> {
    if is_ident(prev) {
        return None;
    }
    let body = rest.strip_prefix("br").or_else(|| rest.strip_prefix('r'))?;
    let hashes = body.len() - body.trim_start_matches('#').len();
    let after = body[hashes..].strip_prefix('"')?;
    let close = format!("\"{}", "#".repeat(hashes));
    let end = after.find(&close).map_or(after.len(), |i| i + close.len());
    Some(rest.len() - after.len() + end)
}

/// Length of the char literal (`'"'`, `'\''`, `'\u{…}'`) at the start of `rest`, if one starts
/// there (a lifetime or a label, `'a`, is not one).
fn char_literal_len(rest: &str) -> Option<usize> {
    let body = rest.strip_prefix('\'')?;
    if let Some(escaped) = body.strip_prefix('\\') {
        let c = escaped.chars().next()?;
        let close = escaped[c.len_utf8()..].find('\'')?;
        return Some(2 + c.len_utf8() + close + 1);
    }
    let c = body.chars().next()?;
    body[c.len_utf8()..]
        .starts_with('\'')
        .then(|| 1 + c.len_utf8() + 1)
}

/// [`strip_comments`] and [`code_only`]: one pass that knows where comments and literals
/// start, so a `//` inside a string or a quote inside a char literal is not misread.
fn strip(text: &str, keep_strings: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut prev = ' ';
    while !rest.is_empty() {
        let literal = if let Some(n) = raw_string_len(rest, prev) {
            Some(n)
        } else if rest.starts_with('"') {
            // A string literal is taken whole, so `"//"` inside it is not a comment.
            let bytes = rest.as_bytes();
            let mut i = 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            Some((i + 1).min(rest.len()))
        } else {
            None
        };
        if let Some(after) = rest.strip_prefix("//") {
            rest = after.find('\n').map_or("", |i| &after[i..]);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.find("*/").map_or("", |i| &after[i + 2..]);
        } else if let Some(n) = literal {
            let (lit, after) = rest.split_at(n);
            if keep_strings {
                out.push_str(lit);
            } else {
                out.push('"');
                out.extend(lit.chars().filter(|c| *c == '\n'));
                out.push('"');
            }
            prev = '"';
            rest = after;
        } else if let Some(n) = char_literal_len(rest) {
            // Taken whole, so the quote in `'"'` does not open a string.
            out.push_str(&rest[..n]);
            prev = '\'';
            rest = &rest[n..];
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            prev = c;
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

/// Where a file outside `src/storage/` (`rel` is relative to `src/`) names redb (any case:
/// `redb::`, `RedbError`, ...) or the store's tables (`tables::X`, or `tables` imported from
/// `storage`). Comments and string literals do not count.
fn check_store_names(rel: &str, text: &str) -> Vec<Violation> {
    if rel.starts_with("storage/") {
        return Vec::new();
    }
    let code = code_only(text);
    let mut found = Vec::new();
    // Brace depth inside a `storage::{ ... }` import group (it may span lines).
    let mut depth = 0;
    for (n, line) in code.lines().enumerate() {
        let mut why = Vec::new();
        if line.to_lowercase().contains("redb") {
            why.push("names redb");
        }
        let mut names_tables = false;
        let mut from = 0;
        for (at, word) in line.match_indices("tables") {
            let before = line[..at].chars().next_back();
            let after = line[at + word.len()..].chars().next();
            if before.is_some_and(is_ident) || after.is_some_and(is_ident) {
                continue;
            }
            depth = group_depth(depth, &line[from..at]);
            from = at;
            names_tables |= line[at + word.len()..].starts_with("::")
                || line[..at].ends_with("storage::")
                || depth > 0;
        }
        depth = group_depth(depth, &line[from..]);
        if names_tables {
            why.push("names the store's tables");
        }
        for w in why {
            found.push((
                rel.to_owned(),
                n + 1,
                format!("{w}; only src/storage/ may (read through storage::Snapshot)"),
            ));
        }
    }
    found
}

/// The brace depth inside a `storage::{` import group after `text`, given the depth before
/// it (0: outside any such group).
fn group_depth(mut depth: usize, text: &str) -> usize {
    let mut rest = text;
    while !rest.is_empty() {
        if depth == 0 {
            let Some(i) = rest.find("storage::{") else {
                return 0;
            };
            depth = 1;
            rest = &rest[i + "storage::{".len()..];
        } else {
            let Some(i) = rest.find(['{', '}']) else {
                return depth;
            };
            depth = if rest[i..].starts_with('{') {
                depth + 1
            } else {
                depth - 1
            };
            rest = &rest[i + 1..];
        }
    }
    depth
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

/// Every Rust file under `src/`: its path relative to `src/` and its text.
fn sources() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files
        .iter()
        .map(|path| {
            let rel = path
                .strip_prefix(&src)
                .expect("under src")
                .to_string_lossy()
                .replace('\\', "/");
            (rel, std::fs::read_to_string(path).expect("read file"))
        })
        .collect()
}

/// Fail with every violation, one per line, under `title`.
fn assert_none(title: &str, violations: &[Violation]) {
    let report: Vec<String> = violations
        .iter()
        .map(|(f, l, why)| format!("src/{f}:{l}: {why}"))
        .collect();
    assert!(report.is_empty(), "{title}:\n{}", report.join("\n"));
}

#[test]
fn imports_point_down() {
    let mut violations = Vec::new();
    let mut per_layer: BTreeMap<String, usize> = BTreeMap::new();
    for (rel, text) in sources() {
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
        violations.extend(check_file(&rel, &text));
    }
    assert_eq!(
        per_layer.len(),
        LAYERS.len(),
        "every layer has files: {per_layer:?}"
    );
    assert_none("imports against the layer order", &violations);
}

#[test]
fn only_storage_names_redb_or_its_tables() {
    let violations: Vec<Violation> = sources()
        .iter()
        .flat_map(|(rel, text)| check_store_names(rel, text))
        .collect();
    assert_none("store internals named outside src/storage/", &violations);
}

/// Where a file outside `src/cluster/` (`rel` is relative to `src/`) names the etcd client
/// (`etcd_client`) or the gRPC stack under it (`tonic`). Comments and strings do not count.
fn check_etcd_names(rel: &str, text: &str) -> Vec<Violation> {
    if rel.starts_with("cluster/") {
        return Vec::new();
    }
    code_only(text)
        .lines()
        .enumerate()
        .filter(|(_, line)| {
            line.match_indices("etcd_client")
                .chain(line.match_indices("tonic"))
                .any(|(at, word)| {
                    let before = line[..at].chars().next_back();
                    let after = line[at + word.len()..].chars().next();
                    !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
                })
        })
        .map(|(n, _)| {
            (
                rel.to_owned(),
                n + 1,
                "names the etcd client; only src/cluster/ may (use crate::cluster::Cluster)"
                    .to_owned(),
            )
        })
        .collect()
}

#[test]
fn only_cluster_names_the_etcd_client() {
    let violations: Vec<Violation> = sources()
        .iter()
        .flat_map(|(rel, text)| check_etcd_names(rel, text))
        .collect();
    assert_none("the etcd client named outside src/cluster/", &violations);
    // The check finds a planted use, and leaves comments, strings and other words alone.
    let v = check_etcd_names(
        "pool/driver.rs",
        "use etcd_client::Client;\nfn f(c: tonic::Code) {}\n",
    );
    assert_eq!(v.iter().map(|x| x.1).collect::<Vec<_>>(), [1, 2], "{v:?}");
    let ok = "//! Talks to etcd_client via crate::cluster.\nlet s = \"etcd_client\";\nlet etcd_clients = 1;\n";
    assert!(check_etcd_names("app/mod.rs", ok).is_empty());
    assert!(check_etcd_names("cluster/lease.rs", "use etcd_client::Client;\n").is_empty());
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

    // Naming redb or the store's tables outside src/storage/ is found too, in any case and
    // however the tables are imported.
    let planted = "use crate::storage::Store;\nuse redb::ReadableTable;\nfn f(e: RedbError) {}\n";
    let v = check_store_names("http/api/devices.rs", planted);
    assert_eq!(v.iter().map(|x| x.1).collect::<Vec<_>>(), [2, 3], "{v:?}");
    let v = check_store_names(
        "http/ui/view.rs",
        "let t = tx.open_table(tables::DEVICES)?;\n",
    );
    assert_eq!(v.len(), 1, "{v:?}");
    let v = check_store_names(
        "app/mod.rs",
        "use crate::storage::{\n    logs::{LogQuery, query},\n    tables,\n};\nuse crate::storage::tables as t;\n",
    );
    assert_eq!(v.iter().map(|x| x.1).collect::<Vec<_>>(), [3, 5], "{v:?}");
    // Not: storage itself, comments, file names in strings, other words, a closed group.
    assert!(check_store_names("storage/logs.rs", "use redb::ReadableTable;\n").is_empty());
    let ok = "//! Reads the redb store via tables::X.\nlet p = dir.join(\"s.redb\");\nlet c = '\"'; let hw_tables = 1;\nuse crate::storage::{Snapshot, Store};\nlet tables = 2;\nlet r = r#\"redb\"#;\n";
    assert!(
        check_store_names("cli/mod.rs", ok).is_empty(),
        "{:?}",
        check_store_names("cli/mod.rs", ok)
    );
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
