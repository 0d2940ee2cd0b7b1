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

#[test]
fn every_accepted_change_is_a_version_and_rollback_restores_it() {
    let r = router(Policy::from_json(&doc().to_string()).unwrap(), clock());
    assert_eq!(r.policy_version(), 1);
    let v1 = r.policy();
    r.register_endpoint(Endpoint::new("g2", "gpt-4", "http://g2")).unwrap();
    assert_eq!(r.policy_version(), 2);
    r.delete_rule("r1").unwrap();
    let mut p = r.policy();
    p.settings.default_strategy = StrategyKind::LeastLoaded;
    let v4 = r.load_policy_with_comment(p, "least loaded for the sale").unwrap();
    assert_eq!(v4, 4);
    // A rejected change makes no version.
    assert!(r.register_endpoint(Endpoint::new("x", "ghost", "http://x")).is_err());
    assert_eq!(r.policy_version(), 4);
    let list = r.policy_versions();
    let comments: Vec<&str> = list.iter().map(|v| v.comment.as_str()).collect();
    assert_eq!(
        comments,
        [
            "initial policy",
            "endpoint g2 set",
            "rule r1 removed",
            "least loaded for the sale"
        ]
    );
    assert_eq!(r.policy_at(1).unwrap(), v1);
    let v5 = r.rollback(1).unwrap();
    assert_eq!(v5, 5);
    assert_eq!(r.policy(), v1);
    assert_eq!(r.policy_versions().last().unwrap().comment, "rollback to version 1");
    assert_eq!(r.policy_at(99).unwrap_err().kind(), "not_found");
}

/// A kept version is the document as it was, whatever changed after it (versions share the
/// items that did not change, so the later changes must not reach into an older one).
#[test]
fn a_kept_version_is_unchanged_by_later_updates_of_its_items() {
    let r = router(Policy::from_json(&doc().to_string()).unwrap(), clock());
    let v1 = r.policy();
    let first = v1.endpoints[0].clone();
    let mut changed = first.clone();
    changed.weight = first.weight + 5.0;
    changed.url = "http://moved".into();
    r.update_endpoint(changed.clone()).unwrap();
    r.deregister_endpoint(&v1.endpoints[1].id).unwrap();
    let mut p = r.policy();
    p.settings.default_strategy = StrategyKind::Hybrid;
    r.load_policy(p).unwrap();
    assert_eq!(r.policy_at(1).unwrap(), v1);
    let v2 = r.policy_at(2).unwrap();
    assert_eq!(v2.endpoints.iter().find(|e| e.id == first.id), Some(&changed));
    assert_eq!(v2.endpoints.len(), v1.endpoints.len());
    assert_eq!(r.policy_at(3).unwrap().endpoints.len(), v1.endpoints.len() - 1);
    assert_eq!(r.policy_at(4).unwrap().settings.default_strategy, StrategyKind::Hybrid);
    assert_ne!(v1.settings.default_strategy, StrategyKind::Hybrid);
}

#[test]
fn only_the_last_versions_are_kept() {
    let mut p = Policy::from_json(&doc().to_string()).unwrap();
    p.settings.versions_kept = 3;
    let r = router(p, clock());
    for i in 0..5 {
        r.register_endpoint(Endpoint::new(format!("n{i}"), "haiku", "http://n"))
            .unwrap();
    }
    let kept: Vec<u64> = r.policy_versions().iter().map(|v| v.version).collect();
    assert_eq!(kept, [4, 5, 6]);
    assert!(r.rollback(2).is_err());
}

#[test]
fn a_watched_file_reloads_and_a_bad_one_is_rejected_with_an_event() {
    let dir = std::env::temp_dir().join(format!("mr-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("policy.json");
    std::fs::write(&f, doc().to_string()).unwrap();
    let r = router(Policy::default(), clock());
    let events = r.events().subscribe(64, false);
    let w = PolicyWatcher::new(r.clone(), &f);
    assert_eq!(w.poll().unwrap(), Some(2));
    assert!(r.model("gpt-4").is_some());
    assert_eq!(w.poll().unwrap(), None, "unchanged");
    // An invalid document: rejected, the previous policy keeps serving, an event says why.
    let mut bad = doc();
    bad["endpoints"][0]["model_id"] = json!("ghost");
    bad["endpoints"][1]["weight"] = json!(-3);
    std::fs::write(&f, bad.to_string()).unwrap();
    assert_eq!(w.poll().unwrap_err().kind(), "invalid_policy");
    assert_eq!(r.policy_version(), 2);
    assert!(r.endpoint("g1").is_some());
    let rejected = events
        .drain()
        .into_iter()
        .find_map(|e| match e {
            Event::PolicyRejected { problems, source, .. } => Some((problems, source)),
            _ => None,
        })
        .expect("policy_rejected");
    assert_eq!(rejected.0.len(), 2);
    assert!(rejected.1.contains("policy.json"));
    // Malformed text is rejected the same way.
    std::fs::write(&f, "{ not json").unwrap();
    assert_eq!(w.poll().unwrap_err().kind(), "parse");
    // Fixed: swapped in.
    let mut good = doc();
    good["default_strategy"] = json!("least_loaded");
    std::fs::write(&f, good.to_string()).unwrap();
    assert_eq!(w.poll().unwrap(), Some(3));
    assert_eq!(r.config().default_strategy, StrategyKind::LeastLoaded);
    // The thread version stops when its handle drops.
    let h = PolicyWatcher::new(r.clone(), &f).spawn(std::time::Duration::from_millis(5));
    drop(h);
    std::fs::remove_dir_all(&dir).unwrap();
}

mod mutations {
    use super::*;
    use proptest::prelude::*;

    /// One way to break a valid document.
    #[derive(Debug, Clone)]
    enum Break {
        NegativeWeight(usize),
        NanWeight(usize),
        DuplicateModel,
        DuplicateEndpoint(usize),
        UnknownModel(usize),
        RuleTargetsGhost,
        RuleWithoutTargets,
        SplitNot100(f64),
        BadRegex,
        ExperimentGhost,
        EmptyUrl(usize),
    }

    fn apply(p: &mut Policy, b: &Break) {
        let n = p.endpoints.len();
        match b {
            Break::NegativeWeight(i) => p.endpoints[i % n].weight = -1.5,
            Break::NanWeight(i) => p.endpoints[i % n].weight = f64::NAN,
            Break::DuplicateModel => {
                let m = p.models[0].clone();
                p.models.push(m)
            }
            Break::DuplicateEndpoint(i) => {
                let e = p.endpoints[i % n].clone();
                p.endpoints.push(e)
            }
            Break::UnknownModel(i) => p.endpoints[i % n].model_id = "ghost".into(),
            Break::RuleTargetsGhost => match p.rules[0].target_models.first_mut() {
                Some(t) => t.model_id = "ghost".into(),
                None => p.rules[0].target_models = serde_json::from_value(json!([{"model_id": "ghost"}])).unwrap(),
            },
            Break::RuleWithoutTargets => p.rules[0].target_models.clear(),
            Break::SplitNot100(x) => {
                p.rules[0].traffic_split = Some(TrafficSplit {
                    primary: *x,
                    canary: 10.0,
                })
            }
            Break::BadRegex => {
                p.rules[0].condition = serde_json::from_value(json!({
                    "metadata": {"key": "k", "op": "regex", "value": "(unclosed"}
                }))
                .unwrap()
            }
            Break::ExperimentGhost => {
                p.settings.experiments = vec![serde_json::from_value(json!({
                    "id": "x", "variants": [
                        {"name": "a", "model_id": "gpt-4", "weight": 1},
                        {"name": "b", "model_id": "ghost", "weight": 1}]
                }))
                .unwrap()]
            }
            Break::EmptyUrl(i) => p.endpoints[i % n].url = " ".into(),
        }
    }

    fn breaks() -> impl Strategy<Value = Break> {
        prop_oneof![
            any::<usize>().prop_map(Break::NegativeWeight),
            any::<usize>().prop_map(Break::NanWeight),
            Just(Break::DuplicateModel),
            any::<usize>().prop_map(Break::DuplicateEndpoint),
            any::<usize>().prop_map(Break::UnknownModel),
            Just(Break::RuleTargetsGhost),
            Just(Break::RuleWithoutTargets),
            (0.0f64..200.0)
                .prop_filter("not 90", |x| (x - 90.0).abs() > 1e-6)
                .prop_map(Break::SplitNot100),
            Just(Break::BadRegex),
            Just(Break::ExperimentGhost),
            any::<usize>().prop_map(Break::EmptyUrl),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1_000))]
        /// Every document made invalid by 1-3 mutations is rejected, naming at least one path,
        /// and the live policy (and its version) stays as it was.
        #[test]
        fn broken_documents_are_rejected_and_change_nothing(bs in proptest::collection::vec(breaks(), 1..4)) {
            let valid = Policy::from_json(&doc().to_string()).unwrap();
            let r = router(valid.clone(), clock());
            r.register_endpoint(Endpoint::new("live", "haiku", "http://live")).unwrap();
            let (before, version) = (r.policy(), r.policy_version());
            let mut p = valid;
            for b in &bs {
                apply(&mut p, b);
            }
            let e = r.load_policy(p).unwrap_err();
            prop_assert!(e.field().is_some_and(|f| !f.is_empty()), "{e}");
            prop_assert_eq!(r.policy(), before);
            prop_assert_eq!(r.policy_version(), version);
            prop_assert!(r.route(&RouteRequest::for_model("haiku")).is_ok());
        }
    }
}

#[test]
fn admin_forced_routes_win_and_say_so() {
    let mut d = doc();
    d["forced_routes"] = json!([
        {"endpoint_id": "h1", "agent_type": "coder", "reason": "incident 42"},
        {"model_id": "gpt-4", "workspace_id": "vip", "reason": "vip on gpt-4"}
    ]);
    let r = router(Policy::from_json(&d.to_string()).unwrap(), clock());
    // The rule r1 sends coders to gpt-4; the override wins, down to the endpoint.
    let coder = RouteRequest {
        agent_type: Some("coder".into()),
        ..Default::default()
    };
    for _ in 0..5 {
        let dcs = r.route(&coder).unwrap();
        assert_eq!(dcs.endpoint_id(), "h1");
        assert!(
            dcs.reason().contains("forced by admin override: incident 42"),
            "{}",
            dcs.reason()
        );
    }
    let vip = RouteRequest {
        workspace_id: Some("vip".into()),
        ..Default::default()
    };
    assert!((0..10).all(|_| r.route(&vip).unwrap().model_id() == "gpt-4"));
    // Others route as usual.
    let models: std::collections::HashSet<String> = (0..20)
        .map(|_| r.route(&RouteRequest::default()).unwrap().model_id().to_owned())
        .collect();
    assert_eq!(models.len(), 2);
    // A forced route must name something that exists.
    let mut bad = doc();
    bad["forced_routes"] = json!([{"endpoint_id": "ghost", "reason": "x"}]);
    let e = r.load_policy(Policy::from_json(&bad.to_string()).unwrap()).unwrap_err();
    assert_eq!(e.field(), Some("forced_routes[0].endpoint_id"));
    bad["forced_routes"] = json!([{"reason": "x"}]);
    let e = r.load_policy(Policy::from_json(&bad.to_string()).unwrap()).unwrap_err();
    assert_eq!(e.field(), Some("forced_routes[0].model_id"));
}

#[test]
fn explain_shows_the_strategy_scores() {
    let r = router(Policy::from_json(&doc().to_string()).unwrap(), clock());
    r.report_endpoint("g1", Outcome::success(100.0)).unwrap();
    r.report_endpoint("h1", Outcome::success(300.0)).unwrap();
    let x = r.explain(&RouteRequest {
        strategy: Some(StrategyKind::LatencyBased),
        ..Default::default()
    });
    let score = |id: &str| {
        x.endpoints
            .iter()
            .find(|e| e.endpoint_id == id)
            .unwrap()
            .score
            .clone()
            .unwrap()
    };
    assert_eq!(score("g1").metric, "latency ms");
    assert!(score("g1").value < score("h1").value);
    assert_eq!(x.decision.unwrap().endpoint_id, "g1");
    let json = serde_json::to_value(r.explain(&RouteRequest {
        strategy: Some(StrategyKind::PowerOfTwo),
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(json["endpoints"][0]["score"]["metric"], "p2c cost");
    let rr = r.explain(&RouteRequest {
        strategy: Some(StrategyKind::RoundRobin),
        ..Default::default()
    });
    assert!(rr.endpoints.iter().all(|e| e.score.is_none()));
}

mod round_trip {
    use super::*;
    use proptest::prelude::*;

    prop_compose! {
        fn valid_policy()(
            models in 1usize..5,
            eps in proptest::collection::vec((0usize..4, 0.0f64..10.0, prop::option::of(1u32..500), any::<bool>()), 1..8),
            prices in proptest::collection::vec((0.0f64..0.1, 0.0f64..0.1), 4),
            rules in proptest::collection::vec((0usize..4, 0.01f64..5.0, -5i64..50, any::<bool>()), 0..4),
            strategy in 0usize..10,
            ttl in prop::option::of(1u64..100_000),
        ) -> serde_json::Value {
            let models_json: Vec<_> = (0..models)
                .map(|i| json!({"id": format!("m{i}"), "provider": format!("p{}", i % 2),
                    "pricing": {"input_per_1k": prices[i].0, "output_per_1k": prices[i].1}}))
                .collect();
            let eps_json: Vec<_> = eps.iter().enumerate()
                .map(|(k, (m, w, cap, eu))| {
                    let mut e = json!({"id": format!("e{k}"), "model_id": format!("m{}", m % models),
                        "url": format!("http://e{k}"), "weight": w});
                    if let Some(c) = cap { e["capacity"] = json!(c); }
                    if *eu { e["region"] = json!("eu-west"); }
                    e
                })
                .collect();
            let rules_json: Vec<_> = rules.iter().enumerate()
                .map(|(k, (m, w, prio, agent))| {
                    let mut r = json!({"id": format!("r{k}"), "priority": prio,
                        "target_models": [{"model_id": format!("m{}", m % models), "weight": w}]});
                    if *agent { r["condition"] = json!({"agent_type": format!("a{k}")}); }
                    r
                })
                .collect();
            let mut p = json!({"models": models_json, "endpoints": eps_json, "rules": rules_json,
                "default_strategy": StrategyKind::ALL[strategy]});
            if let Some(t) = ttl { p["heartbeat_ttl_ms"] = json!(t); }
            p
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// accept → export → import → export is byte-identical, in JSON and in YAML.
        #[test]
        fn export_import_export_is_byte_identical(doc in valid_policy()) {
            let r = router(Policy::from_json(&doc.to_string()).unwrap(), clock());
            let json = r.policy().to_json();
            let r2 = router(Policy::from_json(&json).unwrap(), clock());
            prop_assert_eq!(r2.policy().to_json(), json);
            let yaml = r.policy().to_yaml();
            let r3 = router(Policy::from_yaml(&yaml).unwrap(), clock());
            prop_assert_eq!(r3.policy().to_yaml(), yaml);
        }
    }
}

#[test]
fn a_rules_fallback_order_orders_the_fallback_chain() {
    let d = json!({
        "models": [
            {"id": "a", "provider": "p"}, {"id": "b", "provider": "p"}, {"id": "c", "provider": "p"}
        ],
        "endpoints": [
            {"id": "a1", "model_id": "a", "url": "http://a1"},
            {"id": "a2", "model_id": "a", "url": "http://a2"},
            {"id": "b1", "model_id": "b", "url": "http://b1"},
            {"id": "c1", "model_id": "c", "url": "http://c1"}
        ],
        "rules": [{"id": "r", "target_models": [
            {"model_id": "a", "weight": 1, "fallback_order": 0},
            {"model_id": "b", "weight": 1, "fallback_order": 2},
            {"model_id": "c", "weight": 1, "fallback_order": 1}
        ]}],
        "max_fallbacks": 3
    });
    let r = router(Policy::from_json(&d.to_string()).unwrap(), clock());
    let req = RouteRequest {
        strategy: Some(StrategyKind::RoundRobin),
        ..Default::default()
    };
    let mut seen = std::collections::HashSet::new();
    for _ in 0..12 {
        let dcs = r.route(&req).unwrap();
        let models: Vec<String> = dcs.fallbacks().map(|f| f.model_id).collect();
        let want: Vec<&str> = match dcs.model_id() {
            "a" => vec!["a", "c", "b"],
            "b" => vec!["a", "c"],
            "c" => vec!["a", "b"],
            other => panic!("{other}"),
        };
        assert_eq!(models, want, "chosen {}", dcs.endpoint_id());
        seen.insert(dcs.model_id().to_owned());
    }
    assert_eq!(seen.len(), 3);
}

#[test]
fn an_agents_fallback_models_follow_its_preferred_ones_in_the_chain() {
    let mut d = doc();
    d["agents"] = json!({"writer": {"preferredModels": ["gpt-4"], "fallbackModels": ["haiku"]}});
    d["max_fallbacks"] = json!(2);
    let r = router(Policy::from_json(&d.to_string()).unwrap(), clock());
    let req = RouteRequest {
        agent_type: Some("writer".into()),
        ..Default::default()
    };
    let dcs = r.route(&req).unwrap();
    assert_eq!(dcs.model_id(), "gpt-4");
    let chain: Vec<String> = dcs.fallbacks().map(|f| f.endpoint_id).collect();
    assert_eq!(chain, ["h1"]);
    // A fallback model the workspace forbids is not offered.
    r.set_workspace_config(
        "ws",
        serde_json::from_value(json!({"modelRestrictions": ["gpt-4"]})).unwrap(),
    )
    .unwrap();
    let dcs = r
        .route(&RouteRequest {
            workspace_id: Some("ws".into()),
            ..req
        })
        .unwrap();
    assert_eq!(dcs.fallbacks().count(), 0);
}
