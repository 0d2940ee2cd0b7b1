//! Rule matching at scale: `route` against a policy of 1,000 rules.
//!
//! 1,000 rules over 100 agent types (10 each, with request-type, content-length and metadata
//! conditions, most of which do not match) plus 20 rules for any agent with metadata matchers
//! (one a regex). Each request names one of the agent types; the rule that matches is the last
//! one of its agent type's list in priority order, so matching walks the whole list (about 30
//! rules after the agent-type index). Compared in the same run with the same fleet and no rules.
//!
//! ```text
//! cargo bench -p router-benches --bench rules
//! ```
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use router_core::{Endpoint, Model, Policy, RouteRequest, Router, Rule, StrategyKind};

const AGENTS: usize = 100;

fn fleet(rules: Vec<Rule>) -> Router {
    let models: Vec<Model> = (0..10).map(|k| Model::new(format!("m{k}"), "p")).collect();
    let endpoints = (0..100)
        .map(|i| Endpoint::new(format!("e{i}"), format!("m{}", i % 10), format!("http://e{i}")))
        .collect();
    Router::new(Policy {
        models,
        endpoints,
        rules,
        ..Default::default()
    })
    .expect("valid bench policy")
}

fn rules() -> Vec<Rule> {
    let mut out = Vec::new();
    for a in 0..AGENTS {
        for k in 0..10 {
            // Only the lowest-priority rule of each agent type matches the bench requests.
            let cond = if k == 0 {
                format!(r#"{{"agentType": "agent-{a}"}}"#)
            } else {
                format!(
                    r#"{{"agentType": "agent-{a}", "requestType": ["embedding"], "contentLength": {{"min": 10, "max": 500}},
                         "metadata": {{"key": "tier", "op": "eq", "value": "gold-{k}"}}}}"#
                )
            };
            let json = format!(
                r#"{{"id": "r-{a}-{k}", "priority": {k}, "condition": {cond},
                     "targetModels": [{{"modelId": "m{}", "weight": 2}}, {{"modelId": "m{}", "weight": 1}}]}}"#,
                k % 10,
                (k + 1) % 10
            );
            out.push(serde_json::from_str(&json).expect("bench rule"));
        }
    }
    for g in 0..20 {
        let json = format!(
            r#"{{"id": "g-{g}", "priority": {}, "targetModels": [{{"modelId": "m{}"}}],
                 "condition": {{"metadata": {{"any": [{{"key": "team", "op": "regex", "value": "^squad-{g}$"}},
                                                      {{"key": "spend", "op": "gt", "value": {}}}]}}}}}}"#,
            20 + g,
            g % 10,
            1_000_000 + g
        );
        out.push(serde_json::from_str(&json).expect("bench rule"));
    }
    out
}

fn bench(c: &mut Criterion) {
    let requests: Vec<RouteRequest> = (0..AGENTS)
        .map(|a| {
            RouteRequest::from_json(&format!(
                r#"{{"agentType": "agent-{a}", "requestType": "completion", "contentLength": 300,
                     "metadata": {{"team": "marketing", "spend": 12, "tier": "silver"}}}}"#
            ))
            .map(|mut r| {
                r.strategy = Some(StrategyKind::WeightedRandom);
                r
            })
            .expect("bench request")
        })
        .collect();
    let with_rules = fleet(rules());
    let no_rules = fleet(Vec::new());
    assert!(with_rules.route(&requests[7]).unwrap().rule_id() == Some("r-7-0"));
    let mut g = c.benchmark_group("rules");
    for (name, router) in [("route_1000_rules", &with_rules), ("route_no_rules", &no_rules)] {
        let mut i = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % AGENTS;
                black_box(router.route(black_box(&requests[i])).expect("routes"))
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_millis(1500));
    targets = bench
}
criterion_main!(benches);
