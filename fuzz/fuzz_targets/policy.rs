//! Policy documents from arbitrary bytes (JSON or YAML): parsing never panics; a parsed
//! document that a live router rejects leaves the router's policy and version unchanged; an
//! accepted one round-trips: parse(serialize(p)) == p, and export → import → export is
//! byte-identical.
#![no_main]

use libfuzzer_sys::fuzz_target;
use router_core::{Policy, Router};
use std::sync::OnceLock;

fn live() -> &'static Router {
    static R: OnceLock<Router> = OnceLock::new();
    R.get_or_init(|| {
        Router::new(
            Policy::from_json(
                r#"{"models": [{"id": "m", "provider": "p"}],
                    "endpoints": [{"id": "e", "model_id": "m", "url": "http://e"}]}"#,
            )
            .expect("seed policy"),
        )
        .expect("seed router")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if text.len() > 64 * 1024 {
        return;
    }
    let Ok(policy) = Policy::from_str_any(text) else { return };
    let r = live();
    let (before, version) = (r.policy(), r.policy_version());
    match r.load_policy(policy) {
        Err(_) => {
            assert_eq!(r.policy(), before, "a rejected policy changed the live one");
            assert_eq!(r.policy_version(), version);
        }
        Ok(()) => {
            // An accepted document serialises and parses back to itself.
            let json = r.policy().to_json();
            let again = Policy::from_json(&json).expect("a serialised policy parses");
            assert_eq!(again.to_json(), json, "parse(serialize(p)) == p");
            let exported = r.policy().to_json();
            let r2 = Router::new(Policy::from_json(&exported).expect("export parses")).expect("export loads");
            assert_eq!(r2.policy().to_json(), exported, "export -> import -> export");
            // Back to the seed for the next input.
            r.rollback(version).expect("rollback to the seed");
        }
    }
});
