//! The netlink dataplane and the text render describe the same table.
//!
//! For every golden scenario: what our netlink transactions build in a private network
//! namespace, listed by `nft -j list table inet kube-nftpol`, equals what `nft -f` of the
//! text render builds in a twin namespace (handles dropped, set elements sorted). Then again
//! after a sequence of incremental transactions from one scenario to the next, so element
//! operations, chain rewrites and object removals are checked against the kernel too.
//!
//! Needs root. Each namespace belongs to one thread (`unshare(CLONE_NEWNET)`) and disappears
//! with it, so nothing is left behind even on failure.

mod support;

use std::path::{Path, PathBuf};

use kube_nftpol::compile::{compile_with, Options};
use kube_nftpol::dataplane::{probe, Dataplane, SyncKind};
use kube_nftpol::model::Cluster;
use kube_nftpol::render::text;
use kube_nftpol::ruleset::Ruleset;
use kube_nftpol::sources::manifests;
use support::netns::{assert_root, in_private_netns, nft, normalised_listing};

fn scenarios() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/scenarios");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .expect("scenarios")
        .map(|e| e.expect("entry").path())
        .collect();
    dirs.sort();
    dirs
}

/// The scenario's ruleset in the shape `concat_ports` picks, with the scenario's own options.
fn ruleset_with(dir: &Path, concat_ports: bool) -> Ruleset {
    let node = std::fs::read_to_string(dir.join("node")).expect("node file");
    let loaded = manifests::load_dir(&dir.join("input")).expect("manifests");
    let (cluster, _) = Cluster::from_objects(loaded.objects);
    let options = Options {
        concat_ports,
        ..support::scenario::scenario_options(dir)
    };
    compile_with(&cluster, node.trim(), &options).ruleset
}

fn ruleset(dir: &Path) -> Ruleset {
    ruleset_with(dir, false)
}

/// What `nft -f` makes of the text render, listed.
fn listing_via_nft(rs: &Ruleset) -> String {
    let script = text::render(rs);
    in_private_netns(move |ns| {
        nft(ns, &["-f", "-"], Some(&script));
        normalised_listing(ns)
    })
}

fn line_diff(a: &str, b: &str) -> String {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    let mut out = String::new();
    for line in &a {
        if !b.contains(line) {
            out.push_str(&format!("- {line}\n"));
        }
    }
    for line in &b {
        if !a.contains(line) {
            out.push_str(&format!("+ {line}\n"));
        }
    }
    out
}

#[test]
fn netlink_and_nft_build_the_same_table_for_every_scenario() {
    assert_root();
    let dirs = scenarios();
    // Every scenario in the default shape, then again in the shape for kernels with
    // intervals in concatenations (this kernel has them: the probe test says so), plus the
    // probe's own samples.
    let mut rulesets: Vec<(String, Ruleset)> = Vec::new();
    for (tag, concat_ports) in [("", false), (" (concat ports)", true)] {
        for d in &dirs {
            let name = d.file_name().expect("name").to_string_lossy().into_owned();
            rulesets.push((format!("{name}{tag}"), ruleset_with(d, concat_ports)));
        }
    }
    rulesets.push(("probe sample".into(), probe::sample()));
    rulesets.push(("probe concat sample".into(), probe::concat_sample()));
    let expected: Vec<String> = rulesets.iter().map(|(_, rs)| listing_via_nft(rs)).collect();
    let actual: Vec<(String, SyncKind)> = {
        let rulesets = rulesets.clone();
        in_private_netns(move |ns| {
            let mut out = Vec::new();
            for (_, rs) in &rulesets {
                // A fresh dataplane per scenario: the first sync is a full replace.
                let mut dp = Dataplane::new().expect("netlink socket");
                let applied = dp
                    .apply(rs.clone())
                    .unwrap_or_else(|e| panic!("apply: {e}"));
                out.push((normalised_listing(ns), applied.kind));
            }
            out
        })
    };
    let mut failures = Vec::new();
    for (((name, _), want), (got, kind)) in rulesets.iter().zip(&expected).zip(&actual) {
        assert_eq!(*kind, SyncKind::Full);
        if want != got {
            failures.push(format!(
                "{name}: netlink (+) differs from nft -f (-):\n{}",
                line_diff(want, got)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    println!(
        "{} scenarios: netlink and nft -f build the same table",
        rulesets.len()
    );
}

#[test]
fn incremental_transactions_reach_the_same_table_as_nft() {
    assert_root();
    let rulesets: Vec<(String, Ruleset)> = scenarios()
        .iter()
        .map(|d| {
            (
                d.file_name().expect("name").to_string_lossy().into_owned(),
                ruleset(d),
            )
        })
        .collect();
    let expected: Vec<String> = rulesets.iter().map(|(_, rs)| listing_via_nft(rs)).collect();
    let actual: Vec<(String, SyncKind)> = {
        let rulesets = rulesets.clone();
        in_private_netns(move |ns| {
            // One dataplane walks through every scenario: the first sync is full, each later
            // one goes from the previous scenario's ruleset to the next incrementally.
            let mut dp = Dataplane::new().expect("netlink socket");
            let mut out = Vec::new();
            for (name, rs) in &rulesets {
                let applied = dp
                    .apply(rs.clone())
                    .unwrap_or_else(|e| panic!("{name}: apply: {e}"));
                out.push((normalised_listing(ns), applied.kind));
                assert_eq!(
                    dp.check_drift().expect("list the table"),
                    None,
                    "{name}: drift right after a commit"
                );
            }
            out
        })
    };
    let mut failures = Vec::new();
    for (i, (((name, _), want), (got, kind))) in
        rulesets.iter().zip(&expected).zip(&actual).enumerate()
    {
        let expected_kind = if i == 0 {
            SyncKind::Full
        } else {
            SyncKind::Incremental
        };
        if *kind != expected_kind && *kind != SyncKind::Unchanged {
            failures.push(format!(
                "{name}: sync was {kind:?}, expected {expected_kind:?}"
            ));
        }
        if want != got {
            failures.push(format!(
                "{name} (after incremental updates): netlink (+) differs from nft -f (-):\n{}",
                line_diff(want, got)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
