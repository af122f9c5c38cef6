//! The policy pipeline is pure: model, compile, ruleset, text render and explain do no I/O
//! and do not know about kube, tokio, nftnl or mnl. This keeps every question about policy
//! semantics answerable by a unit test without root, and the dataplane swappable.

use std::path::{Path, PathBuf};

const PURE: &[&str] = &[
    "src/model",
    "src/compile",
    "src/ruleset",
    "src/render/text.rs",
    "src/explain.rs",
];

const FORBIDDEN: &[&str] = &[
    "kube::",
    "kube_runtime",
    "tokio",
    "nftnl",
    "mnl::",
    "std::fs",
    "std::process",
    "std::net::Tcp",
    "std::net::Udp",
    "std::io::std",
    "File::",
    "Command::",
    "println!",
    "eprintln!",
    "std::env",
    "std::time::SystemTime",
    "std::thread",
];

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .expect("source directory is readable")
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for e in entries {
            rust_files(&e, out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

#[test]
fn pure_modules_do_no_io_and_know_no_kernel_or_api_client() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for p in PURE {
        rust_files(&root.join(p), &mut files);
    }
    assert!(
        files.len() >= 8,
        "expected the pure modules' files, found {files:?}"
    );
    let mut offences = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("source file is readable");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in FORBIDDEN {
                if code.contains(word) {
                    offences.push(format!(
                        "{}:{}: {word}: {}",
                        file.display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "I/O or client code in the pure pipeline:\n{}",
        offences.join("\n")
    );
}
