//! `router_core::stats` against scipy/statsmodels reference values
//! (`fixtures/stats_reference.json`, written by `scripts/stats_reference.py`), plus the
//! documented edge cases and merge properties of `Moments`.

use proptest::prelude::*;
use router_core::stats::*;
use serde_json::Value;

const TOL: f64 = 1e-9;

fn fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/stats_reference.json")).unwrap()
}

fn f(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("{key} missing in {v}"))
}

fn u(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// How a reference value is compared.
#[derive(Clone, Copy)]
enum Kind {
    /// Absolute 1e-9 when |want| ≤ 1, relative 1e-9 above.
    Value,
    /// A probability: relative 1e-9 always, so that a p-value of 1e-12 keeps its digits.
    Prob,
}

/// Checks one value and returns its error in the measure it was checked by.
fn check(case: &str, field: &str, got: f64, want: f64, kind: Kind) -> f64 {
    let err = match kind {
        Kind::Value if want.abs() <= 1.0 => (got - want).abs(),
        _ if want == 0.0 => got.abs(),
        _ => (got - want).abs() / want.abs(),
    };
    assert!(
        err <= TOL,
        "{case}: {field} = {got:e}, reference {want:e} (error {err:e})"
    );
    err
}

#[derive(Default)]
struct MaxErr(f64, String);

impl MaxErr {
    fn note(&mut self, err: f64, what: String) {
        if err > self.0 || self.1.is_empty() {
            *self = MaxErr(err, what);
        }
    }
}

#[test]
fn two_proportion_z_test_matches_statsmodels() {
    let fx = fixture();
    let cases = fx["proportion"].as_array().unwrap();
    assert!(cases.len() >= 10);
    let mut max = MaxErr::default();
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let r = two_proportion_z_test(
            u(c, "success_a"),
            u(c, "n_a"),
            u(c, "success_b"),
            u(c, "n_b"),
            f(c, "confidence"),
        )
        .unwrap_or_else(|| panic!("{name}: None"));
        for (field, got, kind) in [
            ("z", r.z, Kind::Value),
            ("p_value", r.p_value, Kind::Prob),
            ("diff", r.diff, Kind::Value),
            ("ci_low", r.ci_low, Kind::Value),
            ("ci_high", r.ci_high, Kind::Value),
        ] {
            let err = check(name, field, got, f(c, field), kind);
            max.note(err, format!("{name}.{field}"));
        }
    }
    println!("proportion: max error {:e} at {}", max.0, max.1);
}

fn check_welch(name: &str, r: &WelchTest, c: &Value, max: &mut MaxErr) {
    for (field, got, kind) in [
        ("t", r.t, Kind::Value),
        ("df", r.df, Kind::Value),
        ("p_value", r.p_value, Kind::Prob),
        ("diff", r.diff, Kind::Value),
        ("ci_low", r.ci_low, Kind::Value),
        ("ci_high", r.ci_high, Kind::Value),
    ] {
        let err = check(name, field, got, f(c, field), kind);
        max.note(err, format!("{name}.{field}"));
    }
}

#[test]
fn welch_from_summaries_matches_scipy() {
    let fx = fixture();
    let cases = fx["welch_summary"].as_array().unwrap();
    assert!(cases.len() >= 10);
    let mut max = MaxErr::default();
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let a = Moments::from_summary(u(c, "n_a"), f(c, "mean_a"), f(c, "var_a"));
        let b = Moments::from_summary(u(c, "n_b"), f(c, "mean_b"), f(c, "var_b"));
        let r = welch_t_test(&a, &b, f(c, "confidence")).unwrap_or_else(|| panic!("{name}: None"));
        check_welch(name, &r, c, &mut max);
    }
    println!("welch (summaries): max error {:e} at {}", max.0, max.1);
}

#[test]
fn welch_from_raw_latencies_matches_scipy() {
    let fx = fixture();
    let cases = fx["welch_raw"].as_array().unwrap();
    assert!(cases.len() >= 3);
    let mut max = MaxErr::default();
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let values = |k: &str| -> Vec<f64> { c[k].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect() };
        let a: Moments = values("a").into_iter().collect();
        let b: Moments = values("b").into_iter().collect();
        for (field, got) in [
            ("mean_a", a.mean()),
            ("var_a", a.variance()),
            ("mean_b", b.mean()),
            ("var_b", b.variance()),
        ] {
            let err = check(name, field, got, f(c, field), Kind::Value);
            max.note(err, format!("{name}.{field}"));
        }
        let r = welch_t_test(&a, &b, f(c, "confidence")).unwrap_or_else(|| panic!("{name}: None"));
        check_welch(name, &r, c, &mut max);
    }
    println!("welch (raw data): max error {:e} at {}", max.0, max.1);
}

#[test]
fn distribution_functions_match_scipy() {
    let fx = fixture();
    let mut max = MaxErr::default();
    for c in fx["distributions"].as_array().unwrap() {
        let func = c["fn"].as_str().unwrap();
        let (got, kind) = match func {
            "normal_cdf" => (normal_cdf(f(c, "x")), Kind::Prob),
            "normal_quantile" => (normal_quantile(f(c, "p")), Kind::Value),
            "student_t_cdf" => (student_t_cdf(f(c, "x"), f(c, "df")), Kind::Prob),
            "student_t_quantile" => (student_t_quantile(f(c, "p"), f(c, "df")), Kind::Value),
            other => panic!("unknown function {other}"),
        };
        let what = format!("{func}({c})");
        let err = check(&what, "value", got, f(c, "value"), kind);
        max.note(err, what);
    }
    println!("distributions: max error {:e} at {}", max.0, max.1);
}

// ---------------------------------------------------------------------------------------------
// Edge cases: the documented answers
// ---------------------------------------------------------------------------------------------

#[test]
fn z_test_rejects_undefined_inputs() {
    assert_eq!(two_proportion_z_test(0, 0, 5, 10, 0.95), None);
    assert_eq!(two_proportion_z_test(5, 10, 0, 0, 0.95), None);
    assert_eq!(two_proportion_z_test(11, 10, 5, 10, 0.95), None);
    assert_eq!(two_proportion_z_test(5, 10, 11, 10, 0.95), None);
    for conf in [0.0, 1.0, -0.5, 1.5, f64::NAN] {
        assert_eq!(two_proportion_z_test(5, 10, 6, 10, conf), None, "confidence {conf}");
    }
}

#[test]
fn z_test_with_pooled_rate_zero_or_one_is_no_difference() {
    for (sa, na, sb, nb) in [(0, 100, 0, 200), (100, 100, 50, 50), (0, 1, 0, 1)] {
        let r = two_proportion_z_test(sa, na, sb, nb, 0.95).unwrap();
        assert_eq!(
            r,
            ProportionTest {
                z: 0.0,
                p_value: 1.0,
                diff: 0.0,
                ci_low: 0.0,
                ci_high: 0.0
            }
        );
    }
    // Only the unpooled SE is 0: the interval is the point `diff`, the test is defined.
    let r = two_proportion_z_test(0, 20, 20, 20, 0.95).unwrap();
    assert_eq!((r.diff, r.ci_low, r.ci_high), (1.0, 1.0, 1.0));
    assert!(r.z > 6.0 && r.p_value < 1e-9 && r.p_value > 0.0);
}

#[test]
fn z_test_swapping_arms_flips_signs() {
    let ab = two_proportion_z_test(120, 1000, 150, 1000, 0.9).unwrap();
    let ba = two_proportion_z_test(150, 1000, 120, 1000, 0.9).unwrap();
    assert_eq!(ab.z, -ba.z);
    assert_eq!(ab.p_value, ba.p_value);
    assert_eq!(ab.diff, -ba.diff);
    assert!((ab.ci_low + ba.ci_high).abs() < 1e-15 && (ab.ci_high + ba.ci_low).abs() < 1e-15);
}

#[test]
fn welch_rejects_undefined_inputs() {
    let two = Moments::from_summary(2, 1.0, 1.0);
    let one = Moments::from_summary(1, 1.0, 1.0);
    assert_eq!(welch_t_test(&Moments::new(), &two, 0.95), None);
    assert_eq!(welch_t_test(&two, &one, 0.95), None);
    let flat_a: Moments = [5.0; 10].into_iter().collect();
    let flat_b: Moments = [6.0; 10].into_iter().collect();
    assert_eq!(flat_a.variance(), 0.0);
    assert_eq!(welch_t_test(&flat_a, &flat_b, 0.95), None, "both variances 0");
    for conf in [0.0, 1.0, f64::NAN] {
        assert_eq!(welch_t_test(&two, &two, conf), None, "confidence {conf}");
    }
    let mut bad = two;
    bad.push(f64::NAN);
    assert_eq!(welch_t_test(&bad, &two, 0.95), None, "non-finite moments");
}

#[test]
fn welch_with_one_zero_variance_uses_the_other_arms_df() {
    let flat: Moments = [5.0; 20].into_iter().collect();
    let b = Moments::from_summary(15, 5.5, 1.5);
    let r = welch_t_test(&flat, &b, 0.95).unwrap();
    assert!((r.df - 14.0).abs() < 1e-12);
    assert!((r.t - 0.5 / (1.5f64 / 15.0).sqrt()).abs() < 1e-12);
}

#[test]
fn welch_swapping_arms_flips_signs() {
    let a = Moments::from_summary(12, 480.0, 6400.0);
    let b = Moments::from_summary(300, 455.0, 900.0);
    let ab = welch_t_test(&a, &b, 0.95).unwrap();
    let ba = welch_t_test(&b, &a, 0.95).unwrap();
    assert_eq!((ab.t, ab.diff), (-ba.t, -ba.diff));
    assert!((ab.df - ba.df).abs() <= 1e-12 * ab.df && (ab.p_value - ba.p_value).abs() <= 1e-15);
}

#[test]
fn moments_of_too_few_values_are_nan() {
    let empty = Moments::new();
    assert_eq!(empty.count(), 0);
    assert!(empty.mean().is_nan() && empty.variance().is_nan());
    let mut one = Moments::new();
    one.push(42.0);
    assert_eq!((one.count(), one.mean()), (1, 42.0));
    assert!(one.variance().is_nan());
    assert_eq!(Moments::from_summary(0, 3.0, 4.0), Moments::new());
}

#[test]
fn moments_merge_equals_pushing_all() {
    let xs: Vec<f64> = (0..1000).map(|i| 100.0 + ((i * 7919) % 1009) as f64 * 0.37).collect();
    let all: Moments = xs.iter().copied().collect();
    let mut merged = Moments::new();
    for chunk in xs.chunks(77) {
        merged.merge(&chunk.iter().copied().collect());
    }
    assert_eq!(merged.count(), all.count());
    assert!((merged.mean() - all.mean()).abs() <= 1e-12 * all.mean().abs());
    assert!((merged.variance() - all.variance()).abs() <= 1e-12 * all.variance());
    // Merging nothing, and into nothing.
    let mut m = all;
    m.merge(&Moments::new());
    assert_eq!(m, all);
    let mut e = Moments::new();
    e.merge(&all);
    assert_eq!(e, all);
}

#[test]
fn moments_serde_round_trip() {
    let m: Moments = [1.5, 2.5, 10.0].into_iter().collect();
    let json = serde_json::to_string(&m).unwrap();
    assert!(
        json.contains("\"n\":3") && json.contains("\"mean\"") && json.contains("\"m2\""),
        "{json}"
    );
    assert_eq!(serde_json::from_str::<Moments>(&json).unwrap(), m);
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= TOL * a.abs().max(b.abs()).max(1.0)
}

proptest! {
    /// Merging partial accumulators gives the same moments as pushing every value into one,
    /// whatever the split points and the order of the merges (within 1e-9).
    #[test]
    fn merge_is_order_independent(
        xs in prop::collection::vec(0.0f64..1e5, 0..300),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        order in any::<u64>(),
    ) {
        let all: Moments = xs.iter().copied().collect();
        let mut bounds: Vec<usize> = cuts.iter().map(|i| i.index(xs.len() + 1)).collect();
        bounds.extend([0, xs.len()]);
        bounds.sort_unstable();
        let mut parts: Vec<Moments> = bounds.windows(2).map(|w| xs[w[0]..w[1]].iter().copied().collect()).collect();
        // A deterministic shuffle from `order`, then a left fold.
        let mut state = order;
        for i in (1..parts.len()).rev() {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            parts.swap(i, (state >> 33) as usize % (i + 1));
        }
        let folded = parts.iter().fold(Moments::new(), |mut acc, p| { acc.merge(p); acc });
        // And a right fold (each part absorbs the accumulator of those after it).
        let right = parts.iter().rev().fold(Moments::new(), |acc, p| { let mut q = *p; q.merge(&acc); q });
        for m in [folded, right] {
            prop_assert_eq!(m.count(), all.count());
            if all.count() > 0 {
                prop_assert!(close(m.mean(), all.mean()), "mean {} vs {}", m.mean(), all.mean());
            }
            if all.count() > 1 {
                prop_assert!(close(m.variance(), all.variance()), "variance {} vs {}", m.variance(), all.variance());
            }
        }
    }
}
