//! Small numeric helpers for the decision path: rounding without libm calls.

/// 2^52: from here on every `f64` is an integer.
const INTEGRAL: f64 = 4_503_599_627_370_496.0;

/// `x.round()` (half away from zero), bit for bit, without a call: on baseline x86-64 (no
/// SSE4.1 `roundsd`) `f64::round` is a call into libm, about 5 ns. Below 2^52 the
/// truncation is a conversion to an integer and `x - trunc(x)` is exact.
#[inline]
pub(crate) fn round(x: f64) -> f64 {
    if x.is_nan() || x.abs() >= INTEGRAL {
        // Integral already, infinite or NaN.
        return x;
    }
    let t = x as i64 as f64;
    let f = x - t;
    let r = if f >= 0.5 {
        t + 1.0
    } else if f <= -0.5 {
        t - 1.0
    } else {
        t
    };
    // -0.3 rounds to -0.0, as `f64::round` gives it.
    r.copysign(x)
}

/// `x.ceil()`, bit for bit, without a call (as [`round`]).
#[inline]
pub(crate) fn ceil(x: f64) -> f64 {
    if x.is_nan() || x.abs() >= INTEGRAL {
        return x;
    }
    let t = x as i64 as f64;
    // -0.3 goes up to -0.0, as `f64::ceil` gives it.
    (if t < x { t + 1.0 } else { t }).copysign(x)
}

#[cfg(test)]
mod tests {
    use super::{ceil, round};
    use proptest::prelude::*;

    #[test]
    fn rounds_as_f64_round_does_on_edges() {
        let edges = [
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.5,
            2.5,
            -2.5,
            0.49999999999999994,
            -0.49999999999999994,
            4_503_599_627_370_495.5,
            4_503_599_627_370_496.0,
            -4_503_599_627_370_495.5,
            1e300,
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        for x in edges {
            assert_eq!(round(x).to_bits(), x.round().to_bits(), "{x}");
            assert_eq!(ceil(x).to_bits(), x.ceil().to_bits(), "{x}");
            assert_eq!(ceil(x + 0.1).to_bits(), (x + 0.1).ceil().to_bits(), "{x} + 0.1");
        }
        assert!(round(f64::NAN).is_nan());
        assert!(ceil(f64::NAN).is_nan());
    }

    proptest! {
        #[test]
        fn rounds_as_f64_round_does(x in any::<f64>().prop_filter("not NaN", |x| !x.is_nan()), y in -1e7f64..1e7) {
            prop_assert_eq!(round(x).to_bits(), x.round().to_bits());
            prop_assert_eq!(round(y).to_bits(), y.round().to_bits());
            prop_assert_eq!(ceil(x).to_bits(), x.ceil().to_bits());
            prop_assert_eq!(ceil(y).to_bits(), y.ceil().to_bits());
        }
    }
}
