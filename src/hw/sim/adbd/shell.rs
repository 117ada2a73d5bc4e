//! The simulated device shell behind the adbd simulator's `shell:` service: a pure
//! interpreter for the few pieces of POSIX `sh` the service sends, with the device's
//! (mksh and toybox) messages and exit statuses.
//!
//! Understood: simple commands `getprop NAME [DEFAULT]`, `echo [-n] WORDS`, `cat FILE...`,
//! `rm [-f] FILE...`, `true`, `false`; redirections `> FILE` and `>> FILE`; lists joined by
//! `;` (or a newline), `&&` and `||`; `$?`; single quotes, double quotes and backslash
//! escapes; `#` comments. Any other command prints
//! `/system/bin/sh: CMD: inaccessible or not found` and sets status 127. Syntax it does not
//! simulate (pipes, `&`, `<`, subshells, other `$` expansions, fd redirections) is refused
//! with a message and status 2 rather than being run wrongly.
//!
//! It holds no state of its own: files and properties live in the [`AdbTarget`].

use super::AdbTarget;

/// `strerror(ENOENT)`, the text file operations fail with when a file is missing.
pub const ENOENT: &str = "No such file or directory";
/// `strerror(EROFS)`, for writes to read-only storage.
pub const EROFS: &str = "Read-only file system";
/// `strerror(ENOSPC)`, for writes to full storage.
pub const ENOSPC: &str = "No space left on device";
/// `strerror(EACCES)`, for places the shell user may not write.
pub const EACCES: &str = "Permission denied";
/// `strerror(EISDIR)`, for file operations on a directory.
pub const EISDIR: &str = "Is a directory";

/// The shell's name in its own messages (`adb shell` runs `/system/bin/sh -c`).
const SH: &str = "/system/bin/sh";

/// What a script did: everything it printed (stdout and stderr merged in order, as the raw
/// `shell:` service delivers them) and its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellRun {
    /// stdout and stderr, interleaved as written.
    pub output: Vec<u8>,
    /// The status of the last command run (`$?` after the script).
    pub status: i32,
}

impl ShellRun {
    /// The output as text (lossy), for tests and logs.
    #[must_use]
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.output).into_owned()
    }
}

/// Run `script` as `sh -c` would on the device, against `target`'s files and properties.
#[must_use]
pub fn run(script: &str, target: &dyn AdbTarget) -> ShellRun {
    match parse(script) {
        Ok(lists) => {
            let mut sh = Shell {
                target,
                console: Vec::new(),
                status: 0,
            };
            for list in &lists {
                sh.and_or(list);
            }
            ShellRun {
                output: sh.console,
                status: sh.status,
            }
        }
        Err(e) => ShellRun {
            output: format!("{SH}: {e}\n").into_bytes(),
            status: e.status(),
        },
    }
}

/// Why a script was not run at all.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SyntaxError {
    /// A quote was opened and never closed (mksh: `no closing quote`).
    NoClosingQuote,
    /// An operator where a command or file name was expected.
    Unexpected(String),
    /// Valid `sh`, but not simulated.
    Unsupported(String),
}

impl SyntaxError {
    /// mksh exits 1 on syntax errors; 2 marks what the simulator refuses.
    fn status(&self) -> i32 {
        match self {
            SyntaxError::NoClosingQuote | SyntaxError::Unexpected(_) => 1,
            SyntaxError::Unsupported(_) => 2,
        }
    }
}

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyntaxError::NoClosingQuote => write!(f, "no closing quote"),
            SyntaxError::Unexpected(t) => write!(f, "syntax error: '{t}' unexpected"),
            SyntaxError::Unsupported(t) => {
                write!(f, "'{t}': not supported by the simulated shell")
            }
        }
    }
}

/// A piece of a word: text, or `$?` (expanded when its command runs, not when parsed).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Status,
}

/// A word before expansion.
type Word = Vec<Part>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// `;`
    Semi,
    /// A newline (ends a command like `;`, but blank lines are allowed).
    Newline,
    And,
    Or,
    /// `>`
    Great,
    /// `>>`
    DGreat,
}

impl Op {
    fn text(self) -> &'static str {
        match self {
            Op::Semi => ";",
            Op::Newline => "newline",
            Op::And => "&&",
            Op::Or => "||",
            Op::Great => ">",
            Op::DGreat => ">>",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(Word),
    Op(Op),
}

/// Split a script into words and operators, handling quotes and escapes.
fn tokenize(script: &str) -> Result<Vec<Token>, SyntaxError> {
    let mut tokens = Vec::new();
    let mut chars = script.chars().peekable();
    // The word being built; `None` between words. A word exists as soon as anything
    // (even an empty quote pair) starts it.
    let mut word: Option<Word> = None;
    // Whether the current word so far is only unquoted digits (an fd number before `>`).
    let mut digits_only = true;

    fn push_text(word: &mut Option<Word>, c: char) {
        let w = word.get_or_insert_with(Vec::new);
        if let Some(Part::Text(t)) = w.last_mut() {
            t.push(c);
        } else {
            w.push(Part::Text(c.to_string()));
        }
    }
    fn finish(tokens: &mut Vec<Token>, word: &mut Option<Word>, digits_only: &mut bool) {
        if let Some(w) = word.take() {
            tokens.push(Token::Word(w));
        }
        *digits_only = true;
    }

    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => finish(&mut tokens, &mut word, &mut digits_only),
            '\n' => {
                finish(&mut tokens, &mut word, &mut digits_only);
                tokens.push(Token::Op(Op::Newline));
            }
            ';' => {
                finish(&mut tokens, &mut word, &mut digits_only);
                if chars.peek() == Some(&';') {
                    return Err(SyntaxError::Unexpected(";;".into()));
                }
                tokens.push(Token::Op(Op::Semi));
            }
            '#' if word.is_none() => {
                // A comment runs to the end of the line.
                while chars.peek().is_some_and(|&c| c != '\n') {
                    chars.next();
                }
            }
            '&' => {
                finish(&mut tokens, &mut word, &mut digits_only);
                if chars.peek() == Some(&'&') {
                    chars.next();
                    tokens.push(Token::Op(Op::And));
                } else {
                    return Err(SyntaxError::Unsupported("&".into()));
                }
            }
            '|' => {
                finish(&mut tokens, &mut word, &mut digits_only);
                if chars.peek() == Some(&'|') {
                    chars.next();
                    tokens.push(Token::Op(Op::Or));
                } else {
                    return Err(SyntaxError::Unsupported("|".into()));
                }
            }
            '>' => {
                if word.is_some() && digits_only {
                    return Err(SyntaxError::Unsupported("N> (fd redirection)".into()));
                }
                finish(&mut tokens, &mut word, &mut digits_only);
                match chars.peek() {
                    Some('>') => {
                        chars.next();
                        tokens.push(Token::Op(Op::DGreat));
                    }
                    Some('&' | '|') => return Err(SyntaxError::Unsupported(">& / >|".into())),
                    _ => tokens.push(Token::Op(Op::Great)),
                }
            }
            '<' | '(' | ')' | '`' => return Err(SyntaxError::Unsupported(c.to_string())),
            '\'' => {
                digits_only = false;
                word.get_or_insert_with(Vec::new);
                loop {
                    match chars.next() {
                        None => return Err(SyntaxError::NoClosingQuote),
                        Some('\'') => break,
                        Some(c) => push_text(&mut word, c),
                    }
                }
            }
            '"' => {
                digits_only = false;
                word.get_or_insert_with(Vec::new);
                loop {
                    match chars.next() {
                        None => return Err(SyntaxError::NoClosingQuote),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            None => return Err(SyntaxError::NoClosingQuote),
                            Some(c @ ('$' | '`' | '"' | '\\')) => push_text(&mut word, c),
                            Some('\n') => {}
                            Some(c) => {
                                push_text(&mut word, '\\');
                                push_text(&mut word, c);
                            }
                        },
                        Some('$') => dollar(&mut chars, &mut word)?,
                        Some('`') => return Err(SyntaxError::Unsupported("`".into())),
                        Some(c) => push_text(&mut word, c),
                    }
                }
            }
            '\\' => {
                digits_only = false;
                match chars.next() {
                    // A trailing backslash stays literal; an escaped newline joins lines.
                    None => push_text(&mut word, '\\'),
                    Some('\n') => {}
                    Some(c) => push_text(&mut word, c),
                }
            }
            '$' => {
                digits_only = false;
                dollar(&mut chars, &mut word)?;
            }
            c => {
                if !c.is_ascii_digit() {
                    digits_only = false;
                }
                push_text(&mut word, c);
            }
        }
    }
    finish(&mut tokens, &mut word, &mut digits_only);
    Ok(tokens)
}

/// After a `$`: `$?` becomes [`Part::Status`]; a `$` before nothing nameable stays literal;
/// every other expansion is refused.
fn dollar(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    word: &mut Option<Word>,
) -> Result<(), SyntaxError> {
    match chars.peek().copied() {
        Some('?') => {
            chars.next();
            word.get_or_insert_with(Vec::new).push(Part::Status);
            Ok(())
        }
        Some(c) if c.is_ascii_alphanumeric() || "_{(@*#$!-".contains(c) => {
            Err(SyntaxError::Unsupported(format!("${c}")))
        }
        _ => {
            let w = word.get_or_insert_with(Vec::new);
            w.push(Part::Text("$".into()));
            Ok(())
        }
    }
}

/// A simple command: words, then redirections (`append`, target) in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Simple {
    words: Vec<Word>,
    redirects: Vec<(bool, Word)>,
}

/// Commands joined by `&&` / `||`: the first, then (`is_and`, command) pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AndOr {
    first: Simple,
    rest: Vec<(bool, Simple)>,
}

/// Parse a script into and-or lists separated by `;` or newlines.
fn parse(script: &str) -> Result<Vec<AndOr>, SyntaxError> {
    let tokens = tokenize(script)?;
    let mut lists = Vec::new();
    let mut i = 0;
    loop {
        // Blank lines are fine anywhere; a `;` needs a command before it.
        while tokens.get(i) == Some(&Token::Op(Op::Newline)) {
            i += 1;
        }
        if i >= tokens.len() {
            return Ok(lists);
        }
        let (first, next) = simple(&tokens, i)?;
        i = next;
        let mut rest = Vec::new();
        while let Some(Token::Op(op @ (Op::And | Op::Or))) = tokens.get(i) {
            // A newline may follow `&&` / `||` before the next command.
            let mut j = i + 1;
            while tokens.get(j) == Some(&Token::Op(Op::Newline)) {
                j += 1;
            }
            let (cmd, next) = simple(&tokens, j)?;
            rest.push((*op == Op::And, cmd));
            i = next;
        }
        lists.push(AndOr { first, rest });
        match tokens.get(i) {
            Some(Token::Op(Op::Semi | Op::Newline)) => i += 1,
            Some(Token::Op(op)) => return Err(SyntaxError::Unexpected(op.text().into())),
            // `simple` stops only at an operator or the end.
            Some(Token::Word(_)) | None => {}
        }
    }
}

/// Parse one simple command starting at `i`; returns it and the index after it.
fn simple(tokens: &[Token], mut i: usize) -> Result<(Simple, usize), SyntaxError> {
    let mut cmd = Simple::default();
    loop {
        match tokens.get(i) {
            Some(Token::Word(w)) => {
                cmd.words.push(w.clone());
                i += 1;
            }
            Some(Token::Op(op @ (Op::Great | Op::DGreat))) => match tokens.get(i + 1) {
                Some(Token::Word(w)) => {
                    cmd.redirects.push((*op == Op::DGreat, w.clone()));
                    i += 2;
                }
                Some(Token::Op(next)) => return Err(SyntaxError::Unexpected(next.text().into())),
                None => return Err(SyntaxError::Unexpected("newline".into())),
            },
            Some(Token::Op(op)) => {
                if cmd.words.is_empty() && cmd.redirects.is_empty() {
                    return Err(SyntaxError::Unexpected(op.text().into()));
                }
                return Ok((cmd, i));
            }
            None => {
                if cmd.words.is_empty() && cmd.redirects.is_empty() {
                    return Err(SyntaxError::Unexpected("newline".into()));
                }
                return Ok((cmd, i));
            }
        }
    }
}

/// Where a command's stdout goes.
enum Stdout {
    /// The console (the stream back to the host).
    Console,
    /// A redirection: collected, then written to the file.
    File(Vec<u8>),
}

/// The interpreter's state while a script runs.
struct Shell<'a> {
    target: &'a dyn AdbTarget,
    /// Everything shown to the host, stdout and stderr in order.
    console: Vec<u8>,
    /// `$?`.
    status: i32,
}

impl Shell<'_> {
    fn and_or(&mut self, list: &AndOr) {
        self.status = self.simple(&list.first);
        for (is_and, cmd) in &list.rest {
            if *is_and == (self.status == 0) {
                self.status = self.simple(cmd);
            }
        }
    }

    fn expand(&self, word: &Word) -> String {
        word.iter()
            .map(|p| match p {
                Part::Text(t) => t.clone(),
                Part::Status => self.status.to_string(),
            })
            .collect()
    }

    /// Run one simple command; returns its status.
    fn simple(&mut self, cmd: &Simple) -> i32 {
        let argv: Vec<String> = cmd.words.iter().map(|w| self.expand(w)).collect();
        // Redirections are opened (created or truncated) before the command runs, as in sh;
        // stdout goes to the last one.
        let mut target_file: Option<(String, bool)> = None;
        for (append, w) in &cmd.redirects {
            let name = self.expand(w);
            let path = absolute(&name);
            let opened = if *append {
                match self.target.read_file(&path) {
                    Ok(_) => Ok(()),
                    Err(e) if e == ENOENT => self.target.write_file(&path, b""),
                    Err(e) => Err(e),
                }
            } else {
                self.target.write_file(&path, b"")
            };
            if let Err(e) = opened {
                self.err(&format!("{SH}: can't create {name}: {e}\n"));
                return 1;
            }
            target_file = Some((name, *append));
        }
        let mut out = match target_file {
            Some(_) => Stdout::File(Vec::new()),
            None => Stdout::Console,
        };
        let status = match argv.first() {
            None => 0,
            Some(name) => self.builtin(name, &argv[1..], &mut out),
        };
        if let (Some((name, append)), Stdout::File(data)) = (target_file, out) {
            let path = absolute(&name);
            let result = if append {
                let mut all = self.target.read_file(&path).unwrap_or_default();
                all.extend_from_slice(&data);
                self.target.write_file(&path, &all)
            } else if data.is_empty() {
                Ok(())
            } else {
                self.target.write_file(&path, &data)
            };
            if let Err(e) = result {
                let cmd = argv.first().map_or("", String::as_str);
                self.err(&format!("{SH}: {cmd}: write error: {e}\n"));
                return 1;
            }
        }
        status
    }

    fn err(&mut self, text: &str) {
        self.console.extend_from_slice(text.as_bytes());
    }

    fn out(&mut self, to: &mut Stdout, data: &[u8]) {
        match to {
            Stdout::Console => self.console.extend_from_slice(data),
            Stdout::File(buf) => buf.extend_from_slice(data),
        }
    }

    fn builtin(&mut self, name: &str, args: &[String], out: &mut Stdout) -> i32 {
        match name {
            "true" => 0,
            "false" => 1,
            "echo" => {
                let (newline, words) = match args.first().map(String::as_str) {
                    Some("-n") => (false, &args[1..]),
                    _ => (true, args),
                };
                let mut line = words.join(" ");
                if newline {
                    line.push('\n');
                }
                self.out(out, line.as_bytes());
                0
            }
            "getprop" => match args {
                [] => {
                    self.err("getprop: listing all properties is not simulated\n");
                    1
                }
                [name] | [name, _] => {
                    let default = args.get(1).map_or("", String::as_str);
                    let value = self.target.getprop(name);
                    let line = format!("{}\n", value.as_deref().unwrap_or(default));
                    self.out(out, line.as_bytes());
                    0
                }
                _ => {
                    self.err("getprop: Max 2 arguments\n");
                    1
                }
            },
            "cat" => {
                let mut status = 0;
                for file in args {
                    if file.starts_with('-') {
                        self.err(&format!("cat: option {file} is not simulated\n"));
                        return 1;
                    }
                    match self.target.read_file(&absolute(file)) {
                        Ok(data) => self.out(out, &data),
                        Err(e) => {
                            self.err(&format!("cat: {file}: {e}\n"));
                            status = 1;
                        }
                    }
                }
                status
            }
            "rm" => {
                let mut force = false;
                let mut files = args;
                while let Some(opt) = files.first().filter(|a| a.starts_with('-') && a.len() > 1) {
                    if opt == "--" {
                        files = &files[1..];
                        break;
                    }
                    if opt.chars().skip(1).all(|c| c == 'f') {
                        force = true;
                        files = &files[1..];
                    } else {
                        self.err(&format!("rm: option {opt} is not simulated\n"));
                        return 1;
                    }
                }
                if files.is_empty() {
                    if force {
                        return 0;
                    }
                    self.err("rm: Needs 1 argument\n");
                    return 1;
                }
                let mut status = 0;
                for file in files {
                    match self.target.remove_file(&absolute(file)) {
                        Ok(()) => {}
                        Err(e) if force && e == ENOENT => {}
                        Err(e) => {
                            self.err(&format!("rm: {file}: {e}\n"));
                            status = 1;
                        }
                    }
                }
                status
            }
            _ => {
                self.err(&format!("{SH}: {name}: inaccessible or not found\n"));
                127
            }
        }
    }
}

/// `adb shell` starts in `/`, so a relative name is under the root.
fn absolute(name: &str) -> String {
    if name.starts_with('/') {
        name.to_owned()
    } else {
        format!("/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::sim::adbd::{MemoryAdbTarget, MemoryStorage};

    /// The check the service sends, with a fixed nonce.
    const CHECK: &str = "echo mozpool-check-1f2e > /data/local/tmp/.mozpool-check && cat /data/local/tmp/.mozpool-check && rm /data/local/tmp/.mozpool-check; echo rc=$?";

    fn sh(script: &str) -> (String, i32) {
        sh_on(&MemoryAdbTarget::new(), script)
    }

    fn sh_on(t: &MemoryAdbTarget, script: &str) -> (String, i32) {
        let r = run(script, t);
        (r.text(), r.status)
    }

    #[test]
    fn getprop_prints_the_value_or_an_empty_line() {
        assert_eq!(sh("getprop sys.boot_completed"), ("1\n".into(), 0));
        assert_eq!(sh("getprop no.such.prop"), ("\n".into(), 0));
        assert_eq!(sh("getprop no.such.prop dflt"), ("dflt\n".into(), 0));
        assert_eq!(sh("getprop ro.product.model"), ("Sim Panda\n".into(), 0));
        let t = MemoryAdbTarget::new();
        t.set_prop("sys.boot_completed", None);
        assert_eq!(sh_on(&t, "getprop sys.boot_completed"), ("\n".into(), 0));
        assert_eq!(sh("getprop a b c").1, 1);
        assert_eq!(sh("getprop").1, 1);
    }

    #[test]
    fn the_storage_check_writes_reads_and_removes() {
        let t = MemoryAdbTarget::new();
        assert_eq!(sh_on(&t, CHECK), ("mozpool-check-1f2e\nrc=0\n".into(), 0));
        assert!(t.files().is_empty(), "{:?}", t.files());
    }

    #[test]
    fn the_storage_check_on_read_only_storage_reports_rc_1_and_leaves_nothing() {
        let t = MemoryAdbTarget::new();
        t.set_storage(MemoryStorage::ReadOnly);
        assert_eq!(
            sh_on(&t, CHECK),
            (
                "/system/bin/sh: can't create /data/local/tmp/.mozpool-check: Read-only file system\nrc=1\n"
                    .into(),
                0
            )
        );
        assert!(t.files().is_empty());
    }

    #[test]
    fn the_storage_check_on_full_storage_reports_rc_1() {
        let t = MemoryAdbTarget::new();
        t.set_storage(MemoryStorage::Full);
        let (out, _) = sh_on(&t, CHECK);
        assert_eq!(
            out,
            "/system/bin/sh: echo: write error: No space left on device\nrc=1\n"
        );
        // Created (empty) before the write failed, as on a real full disk.
        assert_eq!(
            t.files().get("/data/local/tmp/.mozpool-check"),
            Some(&Vec::new())
        );
    }

    #[test]
    fn cat_and_rm_report_missing_files_like_toybox() {
        assert_eq!(
            sh("cat /data/local/tmp/nope"),
            (
                "cat: /data/local/tmp/nope: No such file or directory\n".into(),
                1
            )
        );
        assert_eq!(
            sh("rm /data/local/tmp/nope"),
            (
                "rm: /data/local/tmp/nope: No such file or directory\n".into(),
                1
            )
        );
        assert_eq!(sh("rm -f /data/local/tmp/nope"), (String::new(), 0));
        assert_eq!(sh("rm"), ("rm: Needs 1 argument\n".into(), 1));
        assert_eq!(sh("rm -f"), (String::new(), 0));
        assert_eq!(sh("rm -r /x").1, 1);
        let t = MemoryAdbTarget::new();
        t.write_file("/data/local/tmp/a", b"A").expect("write");
        t.set_storage(MemoryStorage::ReadOnly);
        assert_eq!(
            sh_on(&t, "rm -f /data/local/tmp/a"),
            ("rm: /data/local/tmp/a: Read-only file system\n".into(), 1)
        );
        // cat goes on after a missing file and fails at the end.
        assert_eq!(
            sh_on(&t, "cat /data/local/tmp/a /x /data/local/tmp/a"),
            ("Acat: /x: No such file or directory\nA".into(), 1)
        );
    }

    #[test]
    fn unknown_commands_are_not_found_with_status_127() {
        assert_eq!(
            sh("ls /data"),
            (
                "/system/bin/sh: ls: inaccessible or not found\n".into(),
                127
            )
        );
        assert_eq!(
            sh("reboot; echo rc=$?"),
            (
                "/system/bin/sh: reboot: inaccessible or not found\nrc=127\n".into(),
                0
            )
        );
    }

    #[test]
    fn lists_follow_sh_semantics() {
        assert_eq!(sh("true"), (String::new(), 0));
        assert_eq!(sh("false"), (String::new(), 1));
        assert_eq!(sh("false && echo no || echo yes").0, "yes\n");
        assert_eq!(sh("true || echo no; echo rc=$?"), ("rc=0\n".into(), 0));
        assert_eq!(sh("false; echo rc=$?"), ("rc=1\n".into(), 0));
        // `$?` is expanded when its command runs, not when the script is parsed.
        assert_eq!(sh("false; echo $? && echo $?").0, "1\n0\n");
        // A skipped command leaves `$?` alone.
        assert_eq!(sh("false && true; echo $?").0, "1\n");
        assert_eq!(sh("echo a\necho b\n\n").0, "a\nb\n");
        assert_eq!(sh("echo a &&\n echo b").0, "a\nb\n");
        assert_eq!(sh("echo a # comment; echo b").0, "a\n");
        assert_eq!(sh(""), (String::new(), 0));
        assert_eq!(sh("echo a;").0, "a\n");
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(sh("echo 'a  b' \"c $? d\" 'e$?'").0, "a  b c 0 d e$?\n");
        assert_eq!(sh(r"echo a\ b \$? c\\d").0, "a b $? c\\d\n");
        assert_eq!(sh(r#"echo "q\"q" "\n""#).0, "q\"q \\n\n");
        assert_eq!(sh("echo ''x\"\"").0, "x\n");
        assert_eq!(sh("echo '' | ").1, 2);
        assert_eq!(sh("echo $ a$").0, "$ a$\n");
        assert_eq!(sh("echo -n hi").0, "hi");
        assert_eq!(sh("'echo' \"hi\"").0, "hi\n");
    }

    #[test]
    fn redirections() {
        let t = MemoryAdbTarget::new();
        assert_eq!(sh_on(&t, "echo -n hi > /data/local/tmp/f").1, 0);
        assert_eq!(t.files()["/data/local/tmp/f"], b"hi");
        assert_eq!(sh_on(&t, "echo more >>/data/local/tmp/f").1, 0);
        assert_eq!(t.files()["/data/local/tmp/f"], b"himore\n");
        assert_eq!(sh_on(&t, ">/data/local/tmp/f").1, 0);
        assert_eq!(t.files()["/data/local/tmp/f"], b"");
        // The file is created before the command runs; stderr still reaches the console.
        assert_eq!(
            sh_on(&t, "cat /nope > /data/local/tmp/out"),
            ("cat: /nope: No such file or directory\n".into(), 1)
        );
        assert_eq!(t.files()["/data/local/tmp/out"], b"");
        assert_eq!(
            sh_on(&t, "echo x > rel"),
            (
                "/system/bin/sh: can't create rel: Read-only file system\n".into(),
                1
            )
        );
        assert_eq!(
            sh_on(&t, "echo x > /data/x"),
            (
                "/system/bin/sh: can't create /data/x: Permission denied\n".into(),
                1
            )
        );
        assert_eq!(
            sh_on(&t, "echo x > /data/local/tmp/../x").1,
            1,
            "no escaping the directory"
        );
        assert_eq!(
            sh_on(&t, "cat /data/local/tmp").0,
            "cat: /data/local/tmp: Is a directory\n"
        );
    }

    #[test]
    fn syntax_errors_and_unsupported_syntax_run_nothing() {
        let t = MemoryAdbTarget::new();
        for (script, status) in [
            ("echo 'a > /data/local/tmp/f", 1),
            ("echo \"a > /data/local/tmp/f", 1),
            ("&& echo a", 1),
            ("echo a && ", 1),
            ("echo a >", 1),
            ("echo > ; echo b", 1),
            ("; echo a", 1),
            ("echo a;; echo b", 1),
            ("echo a | cat", 2),
            ("echo a & echo b > /data/local/tmp/f", 2),
            ("cat < /x", 2),
            ("echo $HOME", 2),
            ("echo ${x}", 2),
            ("echo $(ls)", 2),
            ("echo `ls`", 2),
            ("(echo a)", 2),
            ("echo a 2>/data/local/tmp/f", 2),
        ] {
            let r = run(script, &t);
            assert_eq!(r.status, status, "{script}: {}", r.text());
            assert!(
                r.text().starts_with("/system/bin/sh: "),
                "{script}: {}",
                r.text()
            );
            assert!(!r.text().contains("\na"), "{script} ran: {}", r.text());
        }
        assert_eq!(sh("echo 'a").0, "/system/bin/sh: no closing quote\n");
        assert_eq!(
            sh("echo a &&").0,
            "/system/bin/sh: syntax error: 'newline' unexpected\n"
        );
        assert!(t.files().is_empty(), "{:?}", t.files());
    }

    proptest::proptest! {
        #[test]
        fn any_script_runs_without_panicking(script in "\\PC{0,200}") {
            let t = MemoryAdbTarget::new();
            let _ = run(&script, &t);
        }

        #[test]
        fn shell_like_scripts_run_without_panicking(
            script in "[a-z$?'\" ;&|<>\\\\#\n/.-]{0,80}"
        ) {
            let t = MemoryAdbTarget::new();
            let _ = run(&script, &t);
        }
    }
}
