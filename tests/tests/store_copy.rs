//! `thitl store copy`: a demo data directory copied into a new one (and back) keeps every event,
//! position and chain link; `audit verify` passes on the copy; bad targets change nothing.

use serde_json::Value;

use crate::helpers::{campaign_copy, stdout, thitl};

/// Every event of a data directory as `thitl audit log --json` prints it.
fn log(dir: &std::path::Path) -> Vec<Value> {
    let output = thitl(&["audit", "log", "--data", dir.to_str().unwrap(), "--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    stdout(&output).lines().map(|line| serde_json::from_str(line).expect("one JSON event per line")).collect()
}

#[test]
fn a_demo_store_round_trips_through_store_copy_with_its_chains() {
    let source = campaign_copy();
    let parent = tempfile::tempdir().unwrap();
    let (copy, back) = (parent.path().join("copy"), parent.path().join("back"));
    let from = format!("sqlite:{}", source.path().display());
    let output = thitl(&["store", "copy", "--from", &from, "--to", &format!("sqlite:{}", copy.display())]);
    assert!(output.status.success(), "{}{}", stdout(&output), String::from_utf8_lossy(&output.stderr));
    let original = log(source.path());
    assert!(stdout(&output).contains(&format!("copied {} events", original.len())), "{}", stdout(&output));

    let verified = thitl(&["audit", "verify", "--data", copy.to_str().unwrap()]);
    assert!(verified.status.success(), "{}", stdout(&verified));
    assert!(stdout(&verified).contains(&format!("{} events", original.len())), "{}", stdout(&verified));
    assert!(!stdout(&verified).contains("FAILED"), "{}", stdout(&verified));

    // And back again (a bare path names a data directory too): the same log, to the hash.
    let output = thitl(&["store", "copy", "--from", copy.to_str().unwrap(), "--to", back.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(log(&back), original, "positions, versions, metadata, payloads and hashes");

    // A target that holds events is refused, and keeps what it had.
    let refused = thitl(&["store", "copy", "--from", &from, "--to", back.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(log(&back).len(), original.len());
    // An EventStoreDB node that does not answer, and a store kind thitl does not know, are named
    // plainly, and the source keeps what it had.
    let esdb = thitl(&["store", "copy", "--from", &from, "--to", "esdb://127.0.0.1:1?tls=false"]);
    assert!(
        !esdb.status.success()
            && String::from_utf8_lossy(&esdb.stderr).contains("cannot reach EventStoreDB at 127.0.0.1:1"),
        "{}",
        String::from_utf8_lossy(&esdb.stderr)
    );
    let unknown = thitl(&["store", "copy", "--from", &from, "--to", "postgres://db/thitl"]);
    assert!(
        !unknown.status.success() && String::from_utf8_lossy(&unknown.stderr).contains("unknown store kind 'postgres'"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
    assert_eq!(log(source.path()).len(), original.len());
}
