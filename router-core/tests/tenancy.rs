//! Agent preferences and workspace configuration as filters in every decision.

mod common;

use common::*;
use router_core::*;

fn fleet() -> Policy {
    let mut gpt4 = Model::new("gpt-4", "openai")
        .with_pricing(0.01, 0.03)
        .with_capability("text-generation", Some(8_192));
    gpt4.compliance_labels = vec!["gdpr".into(), "ccpa".into(), "hipaa".into()];
    let mut claude = Model::new("claude-3-sonnet", "anthropic")
        .with_pricing(0.003, 0.015)
        .with_capability("text-generation", None);
    claude.compliance_labels = vec!["gdpr".into(), "ccpa".into()];
    let cheap = Model::new("gpt-3.5-turbo", "openai")
        .with_pricing(0.0005, 0.0015)
        .with_capability("text-generation", None);
    let pricey = Model::new("opus", "anthropic")
        .with_pricing(15.0, 75.0)
        .with_capability("text-generation", None);
    Policy {
        endpoints: vec![
            Endpoint::new("gpt4", "gpt-4", "http://gpt4"),
            Endpoint::new("claude", "claude-3-sonnet", "http://claude"),
            Endpoint::new("cheap", "gpt-3.5-turbo", "http://cheap"),
            Endpoint::new("opus", "opus", "http://opus"),
        ],
        models: vec![gpt4, claude, cheap, pricey],
        ..Default::default()
    }
}

fn agent() -> AgentPreferences {
    serde_json::from_str(include_str!("fixtures/seed_agent_preferences.json")).unwrap()
}

fn workspace() -> WorkspaceConfig {
    serde_json::from_str(include_str!("fixtures/seed_workspace_config.json")).unwrap()
}

fn models_seen(r: &Router, rq: &RouteRequest) -> std::collections::BTreeSet<String> {
    (0..400).map(|_| r.route(rq).unwrap().model_id().to_owned()).collect()
}

#[test]
fn seed_bodies_parse_as_written() {
    let a = agent();
    assert_eq!(a.preferred_models, vec!["gpt-4", "claude-3-sonnet"]);
    assert_eq!(a.performance_requirements.unwrap().max_cost_per_token, Some(0.01));
    let w = workspace();
    assert_eq!(w.budget_limits.unwrap().monthly, Some(2000.0));
    assert_eq!(w.compliance_requirements, vec!["gdpr", "ccpa", "hipaa"]);
}

#[test]
fn agent_preferences_choose_the_candidates() {
    let r = router(fleet(), clock());
    r.set_agent_preferences("creative", agent()).unwrap();
    let rq = RouteRequest {
        agent_type: Some("creative".into()),
        strategy: Some(StrategyKind::RoundRobin),
        ..Default::default()
    };
    let seen = models_seen(&r, &rq);
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec!["claude-3-sonnet", "gpt-4"]);
    // Preferred models all out: the fallback models serve.
    r.set_model_statuses(&[
        ModelStatusUpdate {
            model_id: "gpt-4".into(),
            status: ModelStatus::Inactive,
        },
        ModelStatusUpdate {
            model_id: "claude-3-sonnet".into(),
            status: ModelStatus::Inactive,
        },
    ])
    .unwrap();
    assert_eq!(
        models_seen(&r, &rq).into_iter().collect::<Vec<_>>(),
        vec!["gpt-3.5-turbo"]
    );
    // Other agents: every active model but the one dearer per token than nothing restricts.
    let other = RouteRequest {
        agent_type: Some("analyst".into()),
        ..rq.clone()
    };
    assert!(models_seen(&r, &other).contains("opus"));
    let names: Vec<String> = r.models_for_agent("creative").into_iter().map(|m| m.id).collect();
    assert_eq!(names, vec!["gpt-3.5-turbo"]);
}

#[test]
fn max_cost_per_token_filters_models() {
    let r = router(fleet(), clock());
    let a = AgentPreferences {
        performance_requirements: Some(PerformanceRequirements {
            max_cost_per_token: Some(0.001),
            ..Default::default()
        }),
        ..Default::default()
    };
    r.set_agent_preferences("bulk", a).unwrap();
    let rq = RouteRequest {
        agent_type: Some("bulk".into()),
        strategy: Some(StrategyKind::RoundRobin),
        ..Default::default()
    };
    assert!(!models_seen(&r, &rq).contains("opus"));
    let e = r
        .route(&RouteRequest {
            model: Some("opus".into()),
            ..rq
        })
        .unwrap_err();
    assert!(e.to_string().contains("dearer per token"), "{e}");
}

#[test]
fn workspace_restrictions_and_compliance_filter_every_decision() {
    let r = router(fleet(), clock());
    r.set_workspace_config("ws-marketing-001", workspace()).unwrap();
    let rq = RouteRequest {
        workspace_id: Some("ws-marketing-001".into()),
        strategy: Some(StrategyKind::RoundRobin),
        ..Default::default()
    };
    // Restricted to gpt-4 and claude; hipaa leaves only gpt-4.
    assert_eq!(models_seen(&r, &rq).into_iter().collect::<Vec<_>>(), vec!["gpt-4"]);
    let e = r
        .route(&RouteRequest {
            model: Some("claude-3-sonnet".into()),
            ..rq.clone()
        })
        .unwrap_err();
    assert!(e.to_string().contains("compliance"), "{e}");
    let e = r
        .route(&RouteRequest {
            model: Some("gpt-3.5-turbo".into()),
            ..rq.clone()
        })
        .unwrap_err();
    assert!(e.to_string().contains("restricted by the workspace"), "{e}");
    let x = r.explain(&rq);
    let v: Vec<(String, ModelVerdict)> = x.models.iter().map(|m| (m.model_id.clone(), m.verdict)).collect();
    assert_eq!(
        v,
        vec![
            ("gpt-4".into(), ModelVerdict::Kept),
            ("claude-3-sonnet".into(), ModelVerdict::MissingCompliance),
            ("gpt-3.5-turbo".into(), ModelVerdict::RestrictedByWorkspace),
            ("opus".into(), ModelVerdict::RestrictedByWorkspace),
        ]
    );
    // Quality floor: gpt-4 too slow for the workspace leaves nothing healthy; degraded tiers
    // do not lift the floor, panic does.
    r.report_endpoint("gpt4", Outcome::success(9_000.0)).unwrap();
    let d = r.route(&rq).unwrap();
    assert!(d.is_panic(), "{}", d.reason());
    r.remove_workspace_config("ws-marketing-001").unwrap();
    assert!(r.workspace_config("ws-marketing-001").is_none());
    assert_eq!(models_seen(&r, &rq).len(), 4);
}

#[test]
fn bad_settings_are_rejected_and_policies_round_trip() {
    let r = router(fleet(), clock());
    let mut w = workspace();
    w.quality_requirements.as_mut().unwrap().min_success_rate = Some(1.5);
    assert_eq!(
        r.set_workspace_config("ws", w).unwrap_err().field(),
        Some("quality_requirements.min_success_rate")
    );
    let mut p = fleet();
    p.agents.insert("creative".into(), agent());
    p.workspaces.insert("ws-marketing-001".into(), workspace());
    r.load_policy(p.clone()).unwrap();
    let json = r.policy().to_json();
    assert!(json.contains("preferred_models") && json.contains("compliance_requirements"));
    let r2 = router(Policy::from_json(&json).unwrap(), clock());
    assert_eq!(r2.policy().to_json(), json);
    let mut bad = p;
    bad.agents
        .get_mut("creative")
        .unwrap()
        .performance_requirements
        .as_mut()
        .unwrap()
        .max_latency = Some(-1.0);
    assert_eq!(
        r.load_policy(bad).unwrap_err().field(),
        Some("agents.creative.performance_requirements.max_latency")
    );
    assert_eq!(r.remove_agent_preferences("nobody").unwrap_err().kind(), "not_found");
}
