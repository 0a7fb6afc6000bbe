//! Selects the live EventStoreDB contract suite (`tests/esdb_contract.rs`): it is compiled and run
//! only when `THITL_ESDB_URL` names a node, and its absence is said out loud, never passed over.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=THITL_ESDB_URL");
    println!("cargo::rustc-check-cfg=cfg(esdb_live)");
    match std::env::var("THITL_ESDB_URL") {
        Ok(url) if !url.trim().is_empty() => println!("cargo:rustc-cfg=esdb_live"),
        // Said where tests are built (the test profile's build scripts run as `debug`), not in
        // the release builds that run the demo.
        _ if std::env::var("PROFILE").as_deref() != Ok("release") => println!(
            "cargo:warning=THITL_ESDB_URL is not set: the EventStoreDB contract suite is not compiled or run (set it to e.g. esdb://localhost:2113?tls=false)"
        ),
        _ => {}
    }
}
