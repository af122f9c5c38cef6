//! The dataplane when things go wrong: a transaction the kernel rejects, someone else editing
//! our table, the start-up probe, `cleanup`. Each test runs in private network namespaces and
//! needs root.

mod support;

use std::path::Path;

use kube_nftpol::compile::compile;
use kube_nftpol::dataplane::netlink::{Error, Netlink};
use kube_nftpol::dataplane::{cleanup, probe, Dataplane, SyncKind};
use kube_nftpol::model::Cluster;
use kube_nftpol::render::text;
use kube_nftpol::ruleset::diff::Op;
use kube_nftpol::ruleset::{Chain, Ruleset};
use kube_nftpol::sources::manifests;
use support::netns::{assert_root, in_private_netns, nft, nft_status, normalised_listing};

fn scenario(name: &str) -> Ruleset {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("rules/scenarios")
        .join(name);
    let node = std::fs::read_to_string(dir.join("node")).expect("node file");
    let loaded = manifests::load_dir(&dir.join("input")).expect("manifests");
    let (cluster, _) = Cluster::from_objects(loaded.objects);
    compile(&cluster, node.trim()).ruleset
}

/// The listing `nft -f` of the text render gives: the reference for "the kernel holds `rs`".
fn reference(rs: &Ruleset) -> String {
    let script = text::render(rs);
    in_private_netns(move |ns| {
        nft(ns, &["-f", "-"], Some(&script));
        normalised_listing(ns)
    })
}

#[test]
fn a_rejected_transaction_leaves_the_previous_rules_and_the_next_sync_replaces_everything() {
    assert_root();
    let a = scenario("007-db-only-from-backend");
    let c = scenario("010-egress-ipblock-except");
    // A ruleset the kernel refuses: a chain name beyond its 255-byte limit.
    let mut bad = a.clone();
    bad.chains.insert(
        "x".repeat(300),
        Chain {
            hook: None,
            rules: vec![],
        },
    );
    let (want_a, want_c) = (reference(&a), reference(&c));
    in_private_netns(move |ns| {
        let mut dp = Dataplane::new().expect("netlink");
        dp.apply(a.clone()).expect("first sync");
        let err = dp.apply(bad).expect_err("the kernel refuses the long name");
        match &err {
            Error::Rejected { operation, .. } => {
                assert!(operation.starts_with("add chain xxx"), "{err}")
            }
            other => panic!("expected a rejection naming the operation, got {other}"),
        }
        assert_eq!(
            normalised_listing(ns),
            want_a,
            "the previous ruleset is intact"
        );
        let next = dp.apply(c).expect("next sync");
        assert_eq!(
            next.kind,
            SyncKind::Full,
            "after an error the next sync is a full replace"
        );
        assert_eq!(normalised_listing(ns), want_c);
    });
}

#[test]
fn drift_is_detected_and_repaired_by_a_full_replace() {
    assert_root();
    let a = scenario("007-db-only-from-backend");
    let want = reference(&a);
    let target = a
        .chains
        .keys()
        .find(|n| n.starts_with("ing-"))
        .expect("a target chain")
        .clone();
    let edits: Vec<(&str, String)> = vec![
        (
            "flushed base chain",
            "flush chain inet kube-nftpol forward".into(),
        ),
        (
            "extra rule",
            "add rule inet kube-nftpol forward accept".into(),
        ),
        (
            "removed element",
            "delete element inet kube-nftpol self-v4 { 10.244.1.20 . 10.244.1.20 }".into(),
        ),
        (
            "added map element",
            format!("add element inet kube-nftpol ingress-v4 {{ 10.9.9.9 : jump {target} }}"),
        ),
        ("deleted table", "delete table inet kube-nftpol".into()),
        ("extra chain", "add chain inet kube-nftpol sneaky".into()),
    ];
    in_private_netns(move |ns| {
        let mut dp = Dataplane::new().expect("netlink");
        dp.apply(a.clone()).expect("first sync");
        assert_eq!(
            dp.check_drift().expect("list"),
            None,
            "no drift right after a commit"
        );
        for (what, command) in edits {
            nft(ns, &[command.as_str()], None);
            let drift = dp.check_drift().expect("list");
            assert!(drift.is_some(), "{what}: drift not detected");
            let repaired = dp.apply(a.clone()).expect("repair");
            assert_eq!(
                repaired.kind,
                SyncKind::Full,
                "{what}: repaired by a full replace"
            );
            assert_eq!(normalised_listing(ns), want, "{what}: table restored");
            assert_eq!(
                dp.check_drift().expect("list"),
                None,
                "{what}: no drift after the repair"
            );
        }
    });
}

#[test]
fn the_probe_validates_without_committing_and_check_mode_reports_rejections() {
    assert_root();
    in_private_netns(|ns| {
        let features =
            probe::probe().unwrap_or_else(|e| panic!("this kernel holds our ruleset: {e}"));
        assert!(features.ruleset);
        assert_eq!(
            nft(ns, &["list", "tables"], None),
            "",
            "the probe committed nothing"
        );
        let mut nl = Netlink::open_for("kube-nftpol-check").expect("netlink");
        let bad = [
            Op::EnsureTable,
            Op::FlushChain {
                name: "missing".into(),
            },
        ];
        let err = nl
            .check(&bad)
            .expect_err("flushing a missing chain is refused");
        assert!(err.to_string().contains("flush chain missing"), "{err}");
        assert_eq!(
            nft(ns, &["list", "tables"], None),
            "",
            "check mode commits nothing"
        );
    });
}

#[test]
fn cleanup_deletes_our_table_and_nothing_else() {
    assert_root();
    let a = scenario("003-deny-all-ingress-namespace");
    in_private_netns(move |ns| {
        nft(ns, &["add table inet flannel; add chain inet flannel pass { type filter hook forward priority 0; }"], None);
        Dataplane::new().expect("netlink").apply(a).expect("sync");
        assert!(cleanup().expect("cleanup"), "our table existed");
        assert_eq!(
            nft(ns, &["list", "tables"], None).trim(),
            "table inet flannel"
        );
        assert!(!cleanup().expect("cleanup again"), "nothing left to delete");
        let (ok, _, _) = nft_status(ns, &["list", "table", "inet", "kube-nftpol"], None);
        assert!(!ok, "our table is gone");
    });
}
