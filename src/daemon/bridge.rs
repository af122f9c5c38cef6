//! Same-node pod traffic crosses the `cni0` bridge and reaches the inet hooks only when
//! `net.bridge.bridge-nf-call-iptables` (and `-ip6tables`) is 1. Without it every policy would
//! hold between nodes and silently not within one: the daemon turns it on when it can and
//! refuses to run when it cannot. (These sysctls are per network namespace since Linux 5.3,
//! and appear once the `br_netfilter` module is loaded.)

use std::path::{Path, PathBuf};
use std::process::Command;

pub const SYSCTLS: [&str; 2] = ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables"];

/// What had to be done to get there.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub loaded_module: bool,
    pub enabled: Vec<String>,
}

/// Whether each of [`SYSCTLS`] is 1 now (a missing sysctl is off).
pub fn state(proc_sys: &Path) -> [bool; 2] {
    SYSCTLS.map(|name| {
        std::fs::read_to_string(proc_sys.join("net/bridge").join(name))
            .is_ok_and(|v| v.trim() == "1")
    })
}

/// Makes sure both sysctls under `proc_sys` (normally `/proc/sys`) are 1, loading the module
/// with `modprobe` (a program name or path) if they do not exist yet.
pub fn ensure(proc_sys: &Path, modprobe: &str) -> Result<Report, String> {
    let dir = proc_sys.join("net/bridge");
    let path = |name: &str| -> PathBuf { dir.join(name) };
    let mut report = Report::default();
    if !path(SYSCTLS[0]).exists() {
        let out = Command::new(modprobe).arg("br_netfilter").output();
        let detail = match &out {
            Ok(o) if o.status.success() => String::new(),
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
            Err(e) => e.to_string(),
        };
        if !path(SYSCTLS[0]).exists() {
            return Err(format!(
                "net.bridge.bridge-nf-call-iptables does not exist: the br_netfilter module is not \
                 loaded and `{modprobe} br_netfilter` did not load it ({detail}); without it, traffic \
                 between pods on the same node would bypass every policy"
            ));
        }
        report.loaded_module = true;
    }
    for name in SYSCTLS {
        let p = path(name);
        let value =
            std::fs::read_to_string(&p).map_err(|e| format!("reading {}: {e}", p.display()))?;
        if value.trim() == "1" {
            continue;
        }
        std::fs::write(&p, "1\n").map_err(|e| {
            format!(
                "net.bridge.{name} is {} and cannot be set to 1 ({e}); without it, traffic between \
                 pods on the same node would bypass every policy",
                value.trim()
            )
        })?;
        let now = std::fs::read_to_string(&p).unwrap_or_default();
        if now.trim() != "1" {
            return Err(format!(
                "net.bridge.{name} stays {} after writing 1",
                now.trim()
            ));
        }
        report.enabled.push(format!("net.bridge.{name}"));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_proc(tag: &str, values: Option<(&str, &str)>) -> PathBuf {
        let root = std::env::temp_dir().join(format!("knp-sysctl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("net/bridge")).expect("dir");
        if let Some((v4, v6)) = values {
            std::fs::write(root.join("net/bridge").join(SYSCTLS[0]), v4).expect("write");
            std::fs::write(root.join("net/bridge").join(SYSCTLS[1]), v6).expect("write");
        }
        root
    }

    #[test]
    fn enabled_already_changes_nothing() {
        let root = fake_proc("on", Some(("1\n", "1\n")));
        assert_eq!(ensure(&root, "false"), Ok(Report::default()));
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn off_is_switched_on() {
        let root = fake_proc("off", Some(("1\n", "0\n")));
        let report = ensure(&root, "false").expect("enabled");
        assert_eq!(
            report.enabled,
            vec!["net.bridge.bridge-nf-call-ip6tables".to_string()]
        );
        let v6 = std::fs::read_to_string(root.join("net/bridge").join(SYSCTLS[1])).expect("read");
        assert_eq!(v6.trim(), "1");
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn missing_module_that_cannot_be_loaded_is_an_error_naming_the_cause() {
        let root = fake_proc("missing", None);
        let err = ensure(&root, "/bin/false").expect_err("no module");
        assert!(err.contains("br_netfilter"), "{err}");
        assert!(err.contains("bypass every policy"), "{err}");
        let _ = std::fs::remove_dir_all(root);
    }
}
