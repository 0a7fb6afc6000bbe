//! The `eventstore` 4.0 client installs its own rustls crypto provider in its connection task and
//! panics there when another one is already installed, after which no client of the process can
//! connect. `EsdbStore::connect` refuses instead, with an error that says why. Its own test
//! binary, because the installed provider is process-wide.

use store::{EsdbStore, StoreError};

#[test]
fn connect_refuses_clearly_when_another_rustls_provider_is_installed() {
    rustls::crypto::ring::default_provider().install_default().expect("the first provider of this process");
    for _ in 0..2 {
        let error = EsdbStore::connect("esdb://127.0.0.1:1?tls=false").expect_err("refused before connecting");
        assert!(
            matches!(&error, StoreError::Backend(message) if message.contains("rustls crypto provider is already installed")),
            "{error}"
        );
    }
}
