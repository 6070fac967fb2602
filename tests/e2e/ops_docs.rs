//! The documentation cannot drift from the code: every TOML example in README.md and docs/*.md
//! is loaded by the config loader (every target built as a run would, without network; every
//! `[service]` table by the service's loader), every `idbridge ...` command line in them is
//! parsed by the CLI's own argument parser, every flag named alone in the prose exists, and the
//! AWS IAM policy of docs/aws.md lists exactly the actions the connector calls.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;

fn doc_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// (language, text, first line) of every fenced block.
fn blocks(text: &str) -> Vec<(String, String, usize)> {
    let mut out = Vec::new();
    let mut open: Option<(String, String, usize)> = None;
    for (n, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("```") {
            match open.take() {
                Some(b) => out.push(b),
                None => open = Some((rest.trim().to_owned(), String::new(), n + 2)),
            }
        } else if let Some((_, body, _)) = open.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

/// Inline code spans outside fenced blocks, with their line numbers.
fn inline_spans(text: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut parts = line.split('`');
        parts.next();
        while let (Some(code), Some(_)) = (parts.next(), parts.next()) {
            out.push((code.to_owned(), n + 1));
        }
    }
    out
}

/// A value for `${VAR}` in examples: shaped like what the variable names.
fn placeholder(var: &str) -> Option<String> {
    Some(if var.contains("CONNECTION_STRING") {
        "HostName=h.azure-devices.net;SharedAccessKeyName=p;SharedAccessKey=c2VjcmV0".to_owned()
    } else {
        "placeholder".to_owned()
    })
}

#[test]
fn every_toml_example_in_the_docs_loads() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    let mut errors = Vec::new();
    for file in doc_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (lang, body, line) in blocks(&text) {
            if lang != "toml" {
                continue;
            }
            let at = format!("{}:{line}", file.display());
            let path = dir.path().join("idbridge.toml");
            std::fs::write(&path, &body).unwrap();
            let config = match idbridge::app::Config::parse(&body, Some(path.clone())) {
                Ok(c) => c,
                Err(e) => {
                    errors.push(format!("{at}: {e:#}"));
                    continue;
                }
            };
            for name in config.target_names() {
                if let Err(e) = config
                    .target_with(&name, &placeholder)
                    .and_then(|t| idbridge::app::targets::validate(&t))
                {
                    errors.push(format!("{at}: [targets.{name}]: {e:#}"));
                }
            }
            if body.contains("[service]")
                && let Err(e) = idbridge::service::ServiceConfig::from_file(&path)
            {
                errors.push(format!("{at}: [service]: {e:#}"));
            }
            checked += 1;
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    assert!(checked >= 6, "only {checked} TOML examples found");
}

/// The `idbridge ...` command lines of a shell line (after `cargo run --` or a path to the
/// binary too), cut at pipes, redirections, `)` and comments.
fn command_lines(line: &str) -> Vec<String> {
    let line = line.split(" #").next().unwrap_or("");
    let line = line
        .replace("cargo run -- ", "idbridge ")
        .replace("target/release/idbridge ", "idbridge ")
        .replace("target/debug/idbridge ", "idbridge ");
    let mut out = Vec::new();
    let mut rest = line.as_str();
    while let Some(i) = find_command(rest) {
        let cmd = &rest[i + "idbridge ".len()..];
        let end = cmd.find(['|', '>', ')', ';', '&']).unwrap_or(cmd.len());
        let mut this = &cmd[..end];
        if let Some(j) = find_command(this) {
            this = &this[..j];
        }
        out.push(this.trim().to_owned());
        rest = &cmd[this.len()..];
    }
    out
}

fn find_command(s: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = s[from..].find("idbridge ") {
        let at = from + i;
        let before = s[..at].chars().last();
        if before.is_none_or(|c| c.is_whitespace() || c == '(') {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// Splits like a shell: whitespace, single and double quotes.
fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if !cur.is_empty() || any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if !cur.is_empty() || any {
        out.push(cur);
    }
    out
}

#[test]
fn every_command_line_in_the_docs_parses_and_every_flag_exists() {
    let bin = env!("CARGO_BIN_EXE_idbridge");
    // (command line, where, whether it is a prose mention: `idbridge check` names a command
    // without its required arguments; its flags must still exist).
    let mut commands: Vec<(String, String, bool)> = Vec::new();
    let mut flags: Vec<(String, String)> = Vec::new();
    for file in doc_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (lang, body, line) in blocks(&text) {
            if !matches!(lang.as_str(), "sh" | "bash" | "shell" | "console") {
                continue;
            }
            let joined = body.replace("\\\n", " ");
            for l in joined.lines() {
                for c in command_lines(l) {
                    commands.push((c, format!("{}:{line}", file.display()), false));
                }
            }
        }
        for (code, line) in inline_spans(&text) {
            let at = format!("{}:{line}", file.display());
            if code.starts_with("idbridge ") {
                for c in command_lines(&code.replace(['[', ']'], " ")) {
                    commands.push((c, at.clone(), true));
                }
            } else if let Some(flag) = code.strip_prefix("--") {
                let name = flag.split(['=', ' ', '[']).next().unwrap_or("").to_owned();
                if !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                    flags.push((format!("--{name}"), at));
                }
            }
        }
    }
    assert!(
        commands.len() >= 20,
        "only {} commands found",
        commands.len()
    );
    let mut errors = Vec::new();
    for (cmd, at, mention) in &commands {
        let out = Command::new(bin)
            .args(words(cmd))
            .env("IDBRIDGE_PARSE_ONLY", "1")
            .env_remove("IDBRIDGE_CONFIG")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let incomplete = err.contains("required arguments were not provided")
            || !err.trim_start().starts_with("error:");
        let accepted = out.status.success() || (*mention && incomplete);
        if !accepted {
            errors.push(format!(
                "{at}: `idbridge {cmd}`: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .next()
                    .unwrap_or("")
            ));
        }
    }
    // A flag named alone in the prose exists in some command (the bash completions list them).
    let out = Command::new(bin)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    let completions = String::from_utf8(out.stdout).unwrap();
    for (flag, at) in &flags {
        if !completions.contains(&format!("{flag} ")) && !completions.contains(&format!("{flag}\""))
        {
            errors.push(format!("{at}: flag `{flag}` exists in no command"));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[cfg(feature = "aws-iot")]
#[test]
fn aws_iam_policy_lists_exactly_the_connectors_actions() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/aws.md")).unwrap();
    let (_, json, _) = blocks(&text)
        .into_iter()
        .find(|(lang, _, _)| lang == "json")
        .expect("docs/aws.md has the IAM policy as JSON");
    let policy: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut documented: Vec<String> = policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["Action"].as_array().unwrap().clone())
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    documented.sort();
    // What the connector calls, and the read-only probes of `idbridge check`.
    let mut expected: Vec<String> = idbridge_aws_iot::check::ACTIONS
        .iter()
        .map(|(a, _)| format!("iot:{a}"))
        .chain(
            [
                "DescribeEndpoint",
                "GetPolicy",
                "DescribeThingType",
                "DescribeThingGroup",
            ]
            .map(|a| format!("iot:{a}")),
        )
        .collect();
    expected.sort();
    assert_eq!(documented, expected);
}
