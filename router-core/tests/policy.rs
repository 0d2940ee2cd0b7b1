//! Issue 3: the policy document: JSON and YAML, validation listing every problem, versions,
//! rollback, file reload.

mod common;

use common::*;
use router_core::*;
use serde_json::json;

fn doc() -> serde_json::Value {
    json!({
        "models": [
            {"id": "gpt-4", "provider": "openai", "pricing": {"input_per_1k": 0.01, "output_per_1k": 0.03}},
            {"id": "haiku", "provider": "anthropic"}
        ],
        "endpoints": [
            {"id": "g1", "model_id": "gpt-4", "url": "http://g1"},
            {"id": "h1", "model_id": "haiku", "url": "http://h1", "weight": 2}
        ],
        "rules": [{"id": "r1", "priority": 5, "condition": {"agent_type": "coder"},
                   "target_models": [{"model_id": "gpt-4"}]}],
        "default_strategy": "round_robin"
    })
}

#[test]
fn every_problem_is_listed_with_its_path() {
    let mut d = doc();
    d["endpoints"][1]["weight"] = json!(-1.0);
    d["endpoints"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "g1", "model_id": "gpt-4", "url": "http://x"}));
    d["rules"][0]["target_models"][0]["model_id"] = json!("ghost");
    d["rules"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "r2", "target_models": []}));
    d["models"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "haiku", "provider": "x"}));
    let p = Policy::from_json(&d.to_string()).unwrap();
    let r = router(Policy::from_json(&doc().to_string()).unwrap(), clock());
    let before = r.policy();
    let e = r.load_policy(p).unwrap_err();
    assert_eq!(e.kind(), "invalid_policy");
    let Error::InvalidPolicy { problems } = &e else {
        panic!("{e}")
    };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "models[2].id",
            "endpoints[1].weight",
            "endpoints[2].id",
            "rules[0].target_models[0].model_id",
            "rules[1].target_models"
        ],
        "{e}"
    );
    assert_eq!(r.policy(), before, "the previous policy keeps serving");
    // One problem: that problem's own error.
    let mut d = doc();
    d["endpoints"][1]["weight"] = json!(-1.0);
    let e = r.load_policy(Policy::from_json(&d.to_string()).unwrap()).unwrap_err();
    assert_eq!((e.kind(), e.field()), ("invalid_config", Some("endpoints[1].weight")));
    // Unknown strategy names fail at parse time, with the path.
    let mut d = doc();
    d["default_strategy"] = json!("fastest");
    let e = Policy::from_json(&d.to_string()).unwrap_err();
    assert!(e.to_string().contains("default_strategy"), "{e}");
}

#[test]
fn yaml_and_json_are_the_same_document() {
    let from_json = Policy::from_json(&doc().to_string()).unwrap();
    let yaml = from_json.to_yaml();
    assert_eq!(Policy::from_yaml(&yaml).unwrap(), from_json);
    assert_eq!(Policy::from_str_any(&yaml).unwrap(), from_json);
    let written = r#"
models:
  - id: gpt-4
    provider: openai
endpoints:
  - {id: g1, model_id: gpt-4, url: "http://g1"}
default_strategy: least_loaded
"#;
    let p = Policy::from_yaml(written).unwrap();
    assert_eq!(p.settings.default_strategy, StrategyKind::LeastLoaded);
    let e = Policy::from_yaml("models:\n  - id: 3\n    provider: [x]\n").unwrap_err();
    assert!(e.to_string().contains("models[0]"), "{e}");
    let dir = std::env::temp_dir().join(format!("mr-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("policy.yaml");
    std::fs::write(&f, &yaml).unwrap();
    assert_eq!(Policy::from_file(&f).unwrap(), from_json);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn export_import_export_is_byte_identical() {
    let r = router(Policy::from_json(&doc().to_string()).unwrap(), clock());
    let a = r.policy().to_json();
    let r2 = router(Policy::from_json(&a).unwrap(), clock());
    assert_eq!(r2.policy().to_json(), a);
    let y = r.policy().to_yaml();
    let r3 = router(Policy::from_yaml(&y).unwrap(), clock());
    assert_eq!(r3.policy().to_yaml(), y);
}
