//! Routing rules: the seed's rule, priorities, splits, metadata, validation, explain.

mod common;

use common::*;
use router_core::*;
use std::collections::HashMap;

fn fleet() -> Policy {
    Policy {
        models: vec![
            Model::new("claude-3-sonnet", "anthropic"),
            Model::new("gpt-4", "openai"),
            Model::new("gpt-3.5-turbo", "openai"),
        ],
        endpoints: vec![
            Endpoint::new("claude-a", "claude-3-sonnet", "http://claude-a"),
            Endpoint::new("claude-b", "claude-3-sonnet", "http://claude-b"),
            Endpoint::new("claude-canary", "claude-3-sonnet", "http://claude-canary").with_kind(EndpointKind::Canary),
            Endpoint::new("gpt4", "gpt-4", "http://gpt4"),
            Endpoint::new("gpt35", "gpt-3.5-turbo", "http://gpt35"),
        ],
        rules: vec![serde_json::from_str(include_str!("fixtures/seed_rule.json")).unwrap()],
        ..Default::default()
    }
}

fn creative(len: u64) -> RouteRequest {
    RouteRequest {
        agent_type: Some("creative".into()),
        request_type: Some("completion".into()),
        content_length: Some(len),
        strategy: Some(StrategyKind::WeightedRandom),
        ..Default::default()
    }
}

fn model_shares(r: &Router, rq: &RouteRequest, n: usize) -> (HashMap<String, f64>, HashMap<String, f64>) {
    let (mut models, mut eps) = (HashMap::new(), HashMap::new());
    for _ in 0..n {
        let d = r.route(rq).unwrap();
        *models.entry(d.model_id().to_owned()).or_insert(0.0) += 1.0 / n as f64;
        *eps.entry(d.endpoint_id().to_owned()).or_insert(0.0) += 1.0 / n as f64;
    }
    (models, eps)
}

/// The seed's rule as written: creative completions of 100-2,000 characters go 70/30 to
/// claude-3-sonnet and gpt-4, with 20% to canaries (claude's canary endpoint).
#[test]
fn seed_rule_routes_as_written() {
    seed_thread(21);
    let r = router(fleet(), clock());
    assert_eq!(r.rules()[0].id, "rule-1", "an empty id is assigned");
    let (models, eps) = model_shares(&r, &creative(500), 40_000);
    assert!(!models.contains_key("gpt-3.5-turbo"));
    assert!((eps["claude-canary"] - 0.20).abs() < 0.01, "{eps:?}");
    // The primary 80%: 0.7 / 0.3 between the models, claude's share split over its two primaries.
    assert!((eps["gpt4"] - 0.8 * 0.3).abs() < 0.015, "{eps:?}");
    assert!((eps["claude-a"] - 0.8 * 0.35).abs() < 0.015, "{eps:?}");
    let d = r.route(&creative(500)).unwrap();
    assert_eq!(d.rule_id(), Some("rule-1"));
    assert!(d.reason().contains("rule `rule-1` matched"), "{}", d.reason());
    // Outside the condition: every active chat model.
    let (models, _) = model_shares(&r, &creative(5_000), 3_000);
    assert!(models.contains_key("gpt-3.5-turbo"));
    assert!(r.route(&creative(5_000)).unwrap().rule_id().is_none());
}

#[test]
fn highest_priority_wins_ties_by_id_disabled_never() {
    let mut p = fleet();
    p.rules.clear();
    let rule = |id: &str, prio: i64, model: &str, enabled: bool| Rule {
        id: id.into(),
        name: id.into(),
        condition: Default::default(),
        target_models: vec![TargetModel {
            model_id: model.into(),
            weight: 1.0,
            fallback_order: None,
            canary: false,
        }],
        traffic_split: None,
        priority: prio,
        enabled,
        strategy: None,
        model_selection: None,
    };
    p.rules = vec![
        rule("b", 10, "gpt-4", true),
        rule("a", 10, "gpt-3.5-turbo", true),
        rule("z", 99, "claude-3-sonnet", false),
        rule("low", 1, "claude-3-sonnet", true),
    ];
    let r = router(p, clock());
    for _ in 0..50 {
        let d = r.route(&RouteRequest::default()).unwrap();
        assert_eq!((d.rule_id(), d.model_id()), (Some("a"), "gpt-3.5-turbo"));
    }
    r.delete_rule("a").unwrap();
    assert_eq!(r.route(&RouteRequest::default()).unwrap().rule_id(), Some("b"));
    let mut z = r.rules().into_iter().find(|x| x.id == "z").unwrap();
    z.enabled = true;
    z.strategy = Some(StrategyKind::LeastLoaded);
    r.update_rule(z).unwrap();
    let d = r.route(&RouteRequest::default()).unwrap();
    assert_eq!(d.rule_id(), Some("z"));
    assert_eq!(d.strategy(), StrategyKind::LeastLoaded);
    assert!(d.reason().contains("rule setting"));
    // An explicit model bypasses rules.
    assert_eq!(r.route(&RouteRequest::for_model("gpt-4")).unwrap().rule_id(), None);
}

#[test]
fn agent_index_and_metadata_matchers_route() {
    let mut p = fleet();
    p.rules = serde_json::from_str(
        r#"[
        {"id": "vip", "priority": 50, "targetModels": [{"modelId": "gpt-4"}],
         "condition": {"metadata": {"any": [{"key": "tier", "op": "eq", "value": "vip"}, {"key": "spend", "op": "gt", "value": 1000}]}}},
        {"id": "analyst", "priority": 10, "targetModels": [{"modelId": "gpt-3.5-turbo"}],
         "condition": {"agentType": "analyst"}}
    ]"#,
    )
    .unwrap();
    let r = router(p, clock());
    let rq = |json: &str| RouteRequest::from_json(json).unwrap();
    assert_eq!(
        r.route(&rq(r#"{"agentType": "analyst"}"#)).unwrap().rule_id(),
        Some("analyst")
    );
    assert_eq!(
        r.route(&rq(r#"{"agentType": "analyst", "metadata": {"tier": "vip"}}"#))
            .unwrap()
            .rule_id(),
        Some("vip")
    );
    assert_eq!(
        r.route(&rq(r#"{"metadata": {"spend": 5000}}"#)).unwrap().rule_id(),
        Some("vip")
    );
    assert_eq!(
        r.route(&rq(r#"{"agentType": "writer", "metadata": {"spend": 5}}"#))
            .unwrap()
            .rule_id(),
        None
    );
    let x = r.explain(&rq(r#"{"agentType": "analyst", "metadata": {"tier": "basic"}}"#));
    assert_eq!(x.matched_rule.as_deref(), Some("analyst"));
    let trace: Vec<(String, bool, Option<rules::Mismatch>)> = x
        .rules
        .iter()
        .map(|e| (e.rule_id.clone(), e.matched, e.mismatch))
        .collect();
    assert_eq!(
        trace,
        vec![
            ("vip".into(), false, Some(rules::Mismatch::Metadata)),
            ("analyst".into(), true, None)
        ]
    );
}

#[test]
fn invalid_rules_are_rejected_and_the_previous_policy_keeps_serving() {
    let r = router(fleet(), clock());
    let gen = r.generation();
    let mut bad: Rule = serde_json::from_str(include_str!("fixtures/seed_rule.json")).unwrap();
    bad.target_models[1].model_id = "ghost".into();
    assert_eq!(r.add_rule(bad).unwrap_err().field(), Some("target_models[1].model_id"));
    let bad: Rule = serde_json::from_str(
        r#"{"targetModels": [{"modelId": "gpt-4"}], "condition": {"metadata": {"key": "a", "op": "regex", "value": "("}}}"#,
    )
    .unwrap();
    assert_eq!(r.add_rule(bad).unwrap_err().field(), Some("condition.metadata.value"));
    // A model a rule targets cannot be deregistered from under it.
    let e = r.deregister_model("gpt-4").unwrap_err();
    assert_eq!(e.field(), Some("rules[0].target_models[1].model_id"));
    assert!(r.model("gpt-4").is_some());
    // A whole policy with a bad rule is rejected, naming the rule's path.
    let mut p = fleet();
    p.rules[0].traffic_split = Some(TrafficSplit {
        primary: 50.0,
        canary: 20.0,
    });
    assert_eq!(r.load_policy(p).unwrap_err().field(), Some("rules[0].traffic_split"));
    assert_eq!(r.generation(), gen);
    assert_eq!(r.route(&creative(500)).unwrap().rule_id(), Some("rule-1"));
    assert_eq!(
        r.update_rule(Rule {
            id: "nope".into(),
            ..r.rules()[0].clone()
        })
        .unwrap_err()
        .kind(),
        "not_found"
    );
}

#[test]
fn policies_with_rules_round_trip() {
    let r = router(fleet(), clock());
    let exported = r.policy().to_json();
    let r2 = router(Policy::from_json(&exported).unwrap(), clock());
    assert_eq!(r2.policy().to_json(), exported);
    let json = serde_json::to_value(r.policy()).unwrap();
    assert_eq!(json["rules"][0]["traffic_split"]["canary"], 20.0);
}
