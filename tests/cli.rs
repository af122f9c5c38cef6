//! The `kube-nftpol` binary as users run it.

use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kube-nftpol"))
}

#[test]
fn render_prints_each_scenarios_golden_ruleset_and_its_warnings() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/scenarios");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .expect("scenarios")
        .map(|e| e.expect("entry").path())
        .collect();
    dirs.sort();
    let mut checked = 0;
    for dir in dirs.iter().filter(|d| d.join("expected.nft").exists()) {
        let node = std::fs::read_to_string(dir.join("node")).expect("node file");
        // The words of the scenario's `options` file are `render` flags.
        let options = std::fs::read_to_string(dir.join("options")).unwrap_or_default();
        let flags = options
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .map(|l| format!("--{l}"));
        let out = bin()
            .args(["render", "--manifests"])
            .arg(dir.join("input"))
            .args(["--node-name", node.trim()])
            .args(flags)
            .output()
            .expect("binary runs");
        assert!(
            out.status.success(),
            "{}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let expected = std::fs::read_to_string(dir.join("expected.nft")).expect("golden");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            expected,
            "{}",
            dir.display()
        );
        let warnings = std::fs::read_to_string(dir.join("diagnostics.txt")).unwrap_or_default();
        let stderr =
            String::from_utf8_lossy(&out.stderr).replace(&format!("{}/", dir.display()), "");
        assert_eq!(stderr, warnings, "{}: stderr", dir.display());
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} scenarios have goldens");
}

#[test]
fn node_name_comes_from_the_environment_too() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/scenarios");
    let first = std::fs::read_dir(&dir)
        .expect("scenarios")
        .map(|e| e.expect("entry").path())
        .min()
        .expect("one scenario");
    let out = bin()
        .args(["render", "--manifests"])
        .arg(first.join("input"))
        .env("NODE_NAME", "node-a")
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("table inet kube-nftpol {"));
}

#[test]
fn unreadable_directory_is_a_one_line_error_and_exit_2() {
    let out = bin()
        .args([
            "render",
            "--manifests",
            "/nonexistent/kube-nftpol",
            "--node-name",
            "n",
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: cannot read manifests directory /nonexistent/kube-nftpol:"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_flags_exit_2() {
    let out = bin()
        .args(["render", "--manifests", "/tmp"])
        .env_remove("NODE_NAME")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2), "missing --node-name");
    let out = bin().args(["render", "--bogus"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(2), "unknown flag");
}

/// `kube-nftpol --help` and every command's `--help` against README.md. Each long flag and
/// each environment variable they show, and each default and possible value (as code, in
/// backticks), must appear in the README's "Configuration reference" under the command's own
/// heading: a `### ` line naming `kube-nftpol` (top level), `kube-nftpol run`, and so on, in
/// backticks. Every command `--help` lists must have such a heading. So a flag added without
/// documentation fails here.
#[test]
fn readme_configuration_reference_matches_help() {
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("README.md");
    let reference = section(&readme, "## Configuration reference")
        .expect("README.md has a '## Configuration reference' section");

    let help = |args: &[&str]| -> String {
        let out = bin()
            .args(args)
            .arg("--help")
            .output()
            .expect("binary runs");
        assert!(out.status.success(), "kube-nftpol {args:?} --help failed");
        String::from_utf8(out.stdout).expect("help is UTF-8")
    };

    let top = help(&[]);
    let commands = listed_commands(&top);
    assert!(
        ["run", "cleanup", "render"]
            .iter()
            .all(|c| commands.contains(&c.to_string())),
        "commands parsed from --help: {commands:?}"
    );

    let mut missing = Vec::new();
    let mut pages = vec![(String::from("kube-nftpol"), top)];
    for command in &commands {
        pages.push((format!("kube-nftpol {command}"), help(&[command])));
    }
    for (name, text) in &pages {
        let heading = format!("`{name}`");
        let Some(part) = subsection(reference, &heading) else {
            missing.push(format!("no '### {heading}' heading"));
            continue;
        };
        let names = long_flags(text)
            .into_iter()
            .chain(bracketed(text, "[env: ", '='));
        for word in names {
            if !mentions(part, &word) {
                missing.push(format!("{heading}: {word}"));
            }
        }
        // Defaults and possible values, as code: `20ms`, `json`.
        let values = bracketed(text, "[default: ", ']').into_iter().chain(
            bracketed(text, "[possible values: ", ']')
                .into_iter()
                .flat_map(|v| v.split(", ").map(str::to_string).collect::<Vec<_>>()),
        );
        for value in values {
            if !part.contains(&format!("`{value}`")) {
                missing.push(format!("{heading}: `{value}`"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "README.md's configuration reference does not match --help; missing:\n  {}",
        missing.join("\n  ")
    );
}

/// From a `## ` heading line to the next `## ` heading.
fn section<'a>(text: &'a str, heading: &str) -> Option<&'a str> {
    let start = text.find(&format!("\n{heading}\n"))? + 1;
    let body = &text[start..];
    let end = body[heading.len()..]
        .find("\n## ")
        .map_or(body.len(), |i| heading.len() + i + 1);
    Some(&body[..end])
}

/// The `### ` subsection whose heading line contains `heading`.
fn subsection<'a>(text: &'a str, heading: &str) -> Option<&'a str> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.starts_with("### ") && line.contains(heading) {
            let rest = &text[offset + line.len()..];
            let end = rest.find("\n### ").map_or(rest.len(), |i| i + 1);
            return Some(&text[offset..offset + line.len() + end]);
        }
        offset += line.len();
    }
    None
}

/// The commands of the top-level help's "Commands:" list, without clap's `help`.
fn listed_commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// `--name` of every option line (`  -h, --help  ...`, `      --node-name <NAME>`).
fn long_flags(help: &str) -> Vec<String> {
    help.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = match l.strip_prefix('-') {
                Some(short) if !short.starts_with('-') => short.split_once(", ")?.1,
                Some(_) => l,
                None => return None,
            };
            let name: String = l
                .strip_prefix("--")?
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            (!name.is_empty()).then(|| format!("--{name}"))
        })
        .collect()
}

/// What follows each `open` up to `close`: `[env: NAME=]`, `[default: 20ms]`, ...
fn bracketed(help: &str, open: &str, close: char) -> Vec<String> {
    help.match_indices(open)
        .filter_map(|(i, _)| {
            let rest = &help[i + open.len()..];
            rest.find(close).map(|end| rest[..end].to_string())
        })
        .collect()
}

/// `word` occurs in `text` with no name character (`[A-Za-z0-9_-]`) right before or after it.
fn mentions(text: &str, word: &str) -> bool {
    let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(name_char) && !after.is_some_and(name_char)
    })
}
