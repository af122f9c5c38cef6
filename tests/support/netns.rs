//! Private network namespaces for kernel tests: one per thread, gone when the thread ends.

use std::io::Write;
use std::process::{Command, Stdio};

pub fn assert_root() {
    let out = Command::new("id").arg("-u").output().expect("id runs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "this test programs nftables in private network namespaces and needs root (make test as root)"
    );
}

/// Runs `f` on a thread of its own network namespace; `f` gets the path other processes can
/// use to enter it (`nsenter --net=<path>`).
pub fn in_private_netns<T: Send + 'static>(f: impl FnOnce(&str) -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        let me = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
        let path = format!("/proc/{}/ns/net", me.display());
        f(&path)
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Runs nft in namespace `ns`; panics with nft's error unless it succeeds.
pub fn nft(ns: &str, args: &[&str], stdin: Option<&str>) -> String {
    let (ok, out, err) = nft_status(ns, args, stdin);
    assert!(ok, "nft {args:?} failed: {err}");
    out
}

/// Runs nft in namespace `ns`: (success, stdout, stderr).
pub fn nft_status(ns: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={ns}")).arg("nft").args(args);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("nsenter and nft are installed");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write to nft");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("nft finishes");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `nft -j list table` without handles, objects in a canonical order, elements sorted.
pub fn normalised_listing(ns: &str) -> String {
    let json: serde_json::Value = serde_json::from_str(&nft(
        ns,
        &["-j", "list", "table", "inet", "kube-nftpol"],
        None,
    ))
    .expect("nft -j prints JSON");
    let mut objects: Vec<serde_json::Value> =
        json["nftables"].as_array().cloned().unwrap_or_default();
    objects.retain(|o| o.get("metainfo").is_none());
    for o in objects.iter_mut() {
        strip_handles(o);
        for kind in ["set", "map"] {
            if let Some(elems) = o
                .get_mut(kind)
                .and_then(|s| s.get_mut("elem"))
                .and_then(serde_json::Value::as_array_mut)
            {
                elems.sort_by_key(|e| e.to_string());
            }
        }
    }
    // Order: the table, sets and maps by name, chains by name, rules by chain (stable, so
    // each chain's rule order is kept).
    let key = |o: &serde_json::Value| -> (u8, String) {
        let (rank, kind) = match () {
            _ if o.get("table").is_some() => (0, "table"),
            _ if o.get("set").is_some() => (1, "set"),
            _ if o.get("map").is_some() => (2, "map"),
            _ if o.get("chain").is_some() => (3, "chain"),
            _ => (4, "rule"),
        };
        let name = if kind == "rule" {
            o[kind]["chain"].to_string()
        } else {
            o[kind]["name"].to_string()
        };
        (rank, name)
    };
    objects.sort_by_key(key);
    objects
        .iter()
        .map(|o| o.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn strip_handles(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.remove("handle");
            map.values_mut().for_each(strip_handles);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_handles),
        _ => {}
    }
}

/// `GET path` on `127.0.0.1:port` inside the network namespace at `ns` (a path under
/// /run/netns or /proc): (status code, body), or None if nothing answers.
pub fn http_get(ns: &str, port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let (ns, path) = (ns.to_string(), path.to_string());
    std::thread::spawn(move || {
        let file = std::fs::File::open(&ns).ok()?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((code, body))
    })
    .join()
    .ok()
    .flatten()
}
