//! Rules from arbitrary bytes, compiled and evaluated (RELIABILITY 19): the input is a rule as
//! JSON, a NUL byte, and a route request as JSON. Parsing, compiling and evaluating never
//! panic; a rule the router rejects leaves its rules and policy version unchanged; an
//! accepted one is evaluated by `route` and `explain` on the request, then deleted again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use router_core::rules::Rule;
use router_core::{Policy, RouteRequest, Router};
use std::sync::OnceLock;

fn live() -> &'static Router {
    static R: OnceLock<Router> = OnceLock::new();
    R.get_or_init(|| {
        Router::new(
            Policy::from_json(
                r#"{"models": [
                        {"id": "claude-3-sonnet", "provider": "anthropic", "model_type": "chat"},
                        {"id": "gpt-4", "provider": "openai", "model_type": "chat"}],
                    "endpoints": [
                        {"id": "c1", "model_id": "claude-3-sonnet", "url": "http://c1", "region": "eu-west"},
                        {"id": "g1", "model_id": "gpt-4", "url": "http://g1", "region": "us-east"}]}"#,
            )
            .expect("seed policy"),
        )
        .expect("seed router")
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() > 16 * 1024 {
        return;
    }
    let Some(split) = data.iter().position(|&b| b == 0) else { return };
    let (Ok(rule), Ok(request)) = (std::str::from_utf8(&data[..split]), std::str::from_utf8(&data[split + 1..])) else {
        return;
    };
    let Ok(rule) = serde_json::from_str::<Rule>(rule) else { return };
    let request = RouteRequest::from_json(request).ok();
    let r = live();
    let (rules, version) = (r.rules(), r.policy_version());
    match r.add_rule(rule) {
        Err(_) => {
            assert_eq!(r.rules(), rules, "a rejected rule changed the rules");
            assert_eq!(r.policy_version(), version);
        }
        Ok(id) => {
            if let Some(request) = request {
                // Any outcome but a panic: the rule may send the request nowhere.
                drop(r.route(&request));
                drop(r.explain(&request));
            }
            r.delete_rule(&id).expect("delete the rule just added");
            assert_eq!(r.rules(), rules);
        }
    }
});
