//! Named network namespaces owned by one test, and running code or commands inside them.
//!
//! Every namespace this harness creates is named `knp-<pid>-<run>-<role>`; [`Netns`] deletes
//! its namespace on drop (also while unwinding from a failed assertion), and
//! [`clean_stale`] removes what a killed earlier run of the harness left behind (namespaces
//! and temporary directories whose `<pid>` is no longer alive). Nothing else is touched.

use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

use nix::sched::{setns, CloneFlags};

/// Prefix of everything this harness names.
pub const PREFIX: &str = "knp-";

/// A unique prefix for one test run: `knp-<pid>-<n>-`.
pub fn unique_prefix() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}{}-{n}-", std::process::id())
}

/// A named network namespace (`/run/netns/<name>`), deleted on drop.
pub struct Netns {
    pub name: String,
    file: File,
}

impl Netns {
    pub fn create(name: &str) -> Netns {
        run(Command::new("ip").args(["netns", "add", name]), None);
        let file = match File::open(Path::new("/run/netns").join(name)) {
            Ok(file) => file,
            Err(e) => {
                delete_netns(name);
                panic!("opening /run/netns/{name}: {e}");
            }
        };
        Netns {
            name: name.to_string(),
            file,
        }
    }

    /// The namespace file, for `setns`.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Runs `f` on a thread that has entered this namespace; sockets `f` creates live here.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            let handle = s.spawn(|| {
                enter(&self.file).unwrap_or_else(|e| panic!("setns into {}: {e}", self.name));
                f()
            });
            handle
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Sets per-namespace sysctls (`net.ipv4.ip_forward`, ...) by writing `/proc/sys` from a
    /// thread inside the namespace: `/proc/sys/net` shows the namespace of the writing thread.
    pub fn sysctls(&self, settings: &[(&str, &str)]) {
        self.run(|| {
            for (key, value) in settings {
                let path = Path::new("/proc/sys").join(key.replace('.', "/"));
                std::fs::write(&path, value)
                    .unwrap_or_else(|e| panic!("sysctl {key}={value} in netns {}: {e}", self.name));
            }
        })
    }

    /// Does this sysctl exist in the namespace?
    pub fn has_sysctl(&self, key: &str) -> bool {
        self.run(|| Path::new("/proc/sys").join(key.replace('.', "/")).exists())
    }

    /// `ip -n <ns> -batch -`: one process for many commands; stops at the first failure.
    pub fn ip(&self, commands: &[String]) {
        batch("ip", &self.name, commands);
    }

    /// `bridge -n <ns> -batch -`.
    pub fn bridge(&self, commands: &[String]) {
        batch("bridge", &self.name, commands);
    }

    /// The source address the kernel picks in this namespace for traffic to `dst`
    /// (`ip route get`), what a socket that does not bind gets.
    pub fn route_source(&self, dst: std::net::IpAddr) -> Option<std::net::IpAddr> {
        let out = run(
            Command::new("ip").args(["-n", &self.name, "route", "get", &dst.to_string()]),
            None,
        );
        let mut words = out.split_whitespace();
        while let Some(word) = words.next() {
            if word == "src" {
                return words.next().and_then(|a| a.parse().ok());
            }
        }
        None
    }

    /// `ip netns exec <ns> nft -f -` with `script` on stdin.
    pub fn nft(&self, script: &str) {
        run(
            Command::new("ip").args(["netns", "exec", &self.name, "nft", "-f", "-"]),
            Some(script),
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete_netns(&self.name);
    }
}

fn delete_netns(name: &str) {
    // Never panic here: this runs while unwinding too.
    match Command::new("ip").args(["netns", "del", name]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "warning: ip netns del {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => eprintln!("warning: ip netns del {name}: {e}"),
    }
}

/// Moves the calling thread into the namespace of `file`.
pub fn enter(file: &File) -> nix::Result<()> {
    setns(file, CloneFlags::CLONE_NEWNET)
}

fn batch(tool: &str, netns: &str, commands: &[String]) {
    if commands.is_empty() {
        return;
    }
    let mut script = commands.join("\n");
    script.push('\n');
    run(
        Command::new(tool).args(["-n", netns, "-batch", "-"]),
        Some(&script),
    );
}

/// Runs a command to completion; panics with its stderr (and the stdin it got) on failure.
pub fn run(cmd: &mut Command, stdin: Option<&str>) -> String {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input.as_bytes())
            .unwrap_or_else(|e| panic!("writing stdin of {shown}: {e}"));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {shown}: {e}"));
    if !out.status.success() {
        panic!(
            "{shown} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            stdin
                .map(|s| format!("--- stdin ---\n{s}"))
                .unwrap_or_default()
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Once per process: checks we are root and removes namespaces and temporary directories of
/// earlier runs (same `knp-<pid>-` pattern) whose process is gone.
pub fn prepare_host() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let uid = run(Command::new("id").arg("-u"), None);
        assert_eq!(
            uid.trim(),
            "0",
            "the traffic tests build network namespaces and need root"
        );
        clean_stale();
        // br_netfilter may be built in (no modprobe, no /proc/modules on this kernel); the
        // per-namespace sysctls are checked when a node is built.
        if Path::new("/proc/sys/net/bridge").exists() {
            return;
        }
        let loaded = Command::new("modprobe")
            .arg("br_netfilter")
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            loaded || Path::new("/proc/sys/net/bridge").exists(),
            "br_netfilter is not available (modprobe br_netfilter failed)"
        );
    });
}

/// The pid in a name of ours (`knp-<pid>-...`), if it is one.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, tail) = rest.split_once('-')?;
    // `<n>-` must follow, so names like `knp-foo` are never ours.
    let (run, _) = tail.split_once('-')?;
    run.parse::<u64>().ok()?;
    pid.parse().ok()
}

fn alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

pub fn clean_stale() {
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if owner_pid(&name).is_some_and(|pid| !alive(pid)) {
                eprintln!("removing stale network namespace {name}");
                delete_netns(&name);
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if owner_pid(&name).is_some_and(|pid| !alive(pid)) {
                eprintln!("removing stale directory {}", entry.path().display());
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn stale_name_pattern() {
        assert_eq!(owner_pid("knp-123-4-na"), Some(123));
        assert_eq!(owner_pid("knp-123-4-"), Some(123));
        assert_eq!(owner_pid("knp-123-na"), None);
        assert_eq!(owner_pid("knp-abc-1-x"), None);
        assert_eq!(owner_pid("other-123-4-x"), None);
    }
}
