//! The `options` file of a golden scenario: the `render`/`run` flags it is compiled with, one
//! per line (`#` starts a comment). Absent file: the defaults.
//!
//! ```text
//! fail-closed       # --fail-closed (the guarded pod CIDRs come from the Node manifests)
//! ```

use std::path::Path;

use kube_nftpol::compile::Options;

pub fn scenario_options(dir: &Path) -> Options {
    let mut options = Options::default();
    let path = dir.join("options");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return options;
    };
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => {}
            ["fail-closed"] => options.fail_closed = true,
            _ => panic!("{}:{}: unknown option {line:?}", path.display(), i + 1),
        }
    }
    options
}
