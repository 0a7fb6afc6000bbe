//! `WGPU_ADAPTER_NAME` that matches nothing. Alone in its test binary because it changes the
//! process environment, which every other test reads when it opens an adapter.

use gpu::GpuContext;
use gpu::context::GpuError;

#[test]
fn an_adapter_name_that_matches_nothing_is_an_error_not_a_panic() {
    // SAFETY: this is the only test in this binary, so no other thread reads the environment.
    unsafe { std::env::set_var("WGPU_ADAPTER_NAME", "no adapter is called this") };
    let result = GpuContext::new();
    unsafe { std::env::remove_var("WGPU_ADAPTER_NAME") };
    match result {
        Err(GpuError::NoAdapter(message)) => {
            assert!(message.contains("no adapter is called this"), "{message}")
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(context) => panic!("matched {}", context.describe()),
    }
}
