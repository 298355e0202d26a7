//! Test hook for engine failures, live only with the `fault-injection` cargo feature (which the
//! test builds enable and release builds never do): with `OPENEMBED_FAULT_PANIC_TOKENS=N` set, a
//! batch holding an input of exactly N tokens panics. Used to prove that a failure stays with
//! the request whose input caused it, in the server and in `openembed batch`.

/// Panics when the hook is live and armed and `ids` holds an input of the trigger length;
/// compiled to nothing without the feature.
#[inline]
pub fn maybe_panic(ids: &[&[u32]]) {
    #[cfg(feature = "fault-injection")]
    {
        use std::sync::OnceLock;
        static TRIGGER: OnceLock<Option<usize>> = OnceLock::new();
        let trigger = TRIGGER.get_or_init(|| {
            std::env::var("OPENEMBED_FAULT_PANIC_TOKENS")
                .ok()
                .and_then(|v| v.parse().ok())
        });
        if let Some(n) = *trigger {
            if ids.iter().any(|i| i.len() == n) {
                panic!("injected engine fault: an input of {n} tokens");
            }
        }
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = ids;
}
