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
