//! What the benchmarks in `benches/` share.

use router_core::{Endpoint, Model, ModelType, Policy};

/// `n` endpoints spread over four chat models with different prices (`model-0` cheapest),
/// alternating between the regions `us-east` and `eu-west`, weights 1, 2 and 3 in turn,
/// capacity 1,000 (checked on every pick, never reached).
pub fn fleet(n: usize) -> Policy {
    let models = (0..4)
        .map(|k| {
            Model::new(format!("model-{k}"), format!("provider-{k}"))
                .with_type(ModelType::Chat)
                .with_pricing(0.001 * (k + 1) as f64, 0.002 * (k + 1) as f64)
        })
        .collect();
    let endpoints = (0..n)
        .map(|i| {
            Endpoint::new(
                format!("ep-{i}"),
                format!("model-{}", i % 4),
                format!("http://10.{}.{}.{}/v1", i / 65_536, (i / 256) % 256, i % 256),
            )
            .with_region(if i % 2 == 0 { "us-east" } else { "eu-west" })
            .with_weight((1 + i % 3) as f64)
            .with_capacity(1_000)
        })
        .collect();
    Policy {
        models,
        endpoints,
        ..Default::default()
    }
}

/// `models` chat models of one endpoint each (`model-k` served by `ep-k`), equal prices: the
/// adaptive-choice fleet.
pub fn one_endpoint_per_model(models: usize) -> Policy {
    Policy {
        models: (0..models)
            .map(|k| {
                Model::new(format!("model-{k}"), "p")
                    .with_type(ModelType::Chat)
                    .with_pricing(0.001, 0.002)
            })
            .collect(),
        endpoints: (0..models)
            .map(|k| Endpoint::new(format!("ep-{k}"), format!("model-{k}"), format!("http://ep-{k}/v1")))
            .collect(),
        ..Default::default()
    }
}

/// Two chat models of five endpoints each, capacity 1,000: the load-prediction fleet.
pub fn two_models_of_five() -> Policy {
    Policy {
        models: (0..2)
            .map(|k| Model::new(format!("model-{k}"), "p").with_type(ModelType::Chat))
            .collect(),
        endpoints: (0..10)
            .map(|k| {
                Endpoint::new(
                    format!("ep-{k}"),
                    format!("model-{}", k % 2),
                    format!("http://ep-{k}/v1"),
                )
                .with_capacity(1000)
            })
            .collect(),
        ..Default::default()
    }
}
