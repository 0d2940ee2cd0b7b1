#!/usr/bin/env python3
"""Reference values for router-core's `stats` module (A/B experiment statistics).

Writes router-core/tests/fixtures/stats_reference.json, which router-core/tests/stats.rs checks
to 1e-9. The fixture is committed; CI does not run this script.

How it was run (the versions are also written into the fixture's "generated_by" field):

    python3 -m venv /tmp/stats-venv
    /tmp/stats-venv/bin/pip install scipy statsmodels
    /tmp/stats-venv/bin/python scripts/stats_reference.py

    Python 3.11.7, numpy 2.4.6, scipy 1.17.1, statsmodels 0.15.0

Sources of each value:
- two-proportion z-test: statsmodels `proportions_ztest` (pooled SE, two-sided) for z and p, and
  `confint_proportions_2indep(method="wald", compare="diff")` for the CI; without statsmodels the
  same formulas with scipy.stats.norm (the script checks both agree when statsmodels is present).
- Welch: scipy.stats.ttest_ind(equal_var=False) on raw data (t, p, df, confidence_interval) and
  ttest_ind_from_stats(equal_var=False) on summaries (t, p), with df by Welch–Satterthwaite and the
  CI as diff ± t.isf((1 - confidence) / 2, df) · SE.
- distribution spot checks: scipy.stats.norm / scipy.stats.t cdf, sf, ppf, isf.

Sign convention: every difference is B − A (treatment minus control).
"""

import json
import math
import platform
import sys
from pathlib import Path

import numpy as np
import scipy
from scipy import stats

try:
    import statsmodels
    from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest
except ImportError:  # pragma: no cover - the formula path below is the fallback
    statsmodels = None

OUT = Path(__file__).resolve().parent.parent / "router-core" / "tests" / "fixtures" / "stats_reference.json"


def close(a, b, rel=1e-12):
    return a == b or abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)


# ---------------------------------------------------------------------------------------------
# Two-proportion z-test
# ---------------------------------------------------------------------------------------------

PROPORTION_CASES = [
    # name, success_a, n_a, success_b, n_b, confidence
    ("balanced_typical", 120, 1000, 150, 1000, 0.95),
    ("unbalanced_n", 45, 500, 300, 2800, 0.95),
    ("tiny_samples", 3, 10, 7, 12, 0.90),
    ("large_samples_small_effect", 50_000, 1_000_000, 51_200, 1_000_000, 0.99),
    ("p_about_1e-12", 1000, 10_000, 1326, 10_000, 0.95),
    ("p_far_below_1e-12", 1000, 10_000, 2000, 10_000, 0.95),
    ("p_exactly_one", 100, 1000, 100, 1000, 0.95),
    ("p_near_one", 100, 1000, 100, 1001, 0.90),
    ("negative_diff", 300, 1000, 250, 1000, 0.90),
    ("zero_successes_in_a", 0, 50, 5, 50, 0.95),
    ("all_successes_in_b", 40, 50, 50, 50, 0.99),
    ("high_confidence", 812, 4000, 905, 4100, 0.999),
]


def proportion_case(name, sa, na, sb, nb, conf):
    pa, pb = sa / na, sb / nb
    pooled = (sa + sb) / (na + nb)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / na + 1 / nb))
    z = (pb - pa) / se_pooled
    p = 2 * stats.norm.sf(abs(z))
    se_wald = math.sqrt(pa * (1 - pa) / na + pb * (1 - pb) / nb)
    crit = stats.norm.isf((1 - conf) / 2)
    lo, hi = (pb - pa) - crit * se_wald, (pb - pa) + crit * se_wald
    if statsmodels is not None:
        z_sm, p_sm = proportions_ztest([sb, sa], [nb, na], value=0, alternative="two-sided")
        lo_sm, hi_sm = confint_proportions_2indep(sb, nb, sa, na, method="wald", compare="diff", alpha=1 - conf)
        assert close(z, z_sm) and close(p, p_sm), (name, z, z_sm, p, p_sm)
        assert close(lo, lo_sm) and close(hi, hi_sm), (name, lo, lo_sm, hi, hi_sm)
        z, p, lo, hi = float(z_sm), float(p_sm), float(lo_sm), float(hi_sm)
    return {
        "name": name,
        "success_a": sa,
        "n_a": na,
        "success_b": sb,
        "n_b": nb,
        "confidence": conf,
        "z": float(z),
        "p_value": float(p),
        "diff": pb - pa,
        "ci_low": float(lo),
        "ci_high": float(hi),
    }


# ---------------------------------------------------------------------------------------------
# Welch's t-test
# ---------------------------------------------------------------------------------------------

WELCH_SUMMARY_CASES = [
    # name, (n_a, mean_a, var_a), (n_b, mean_b, var_b), confidence
    ("balanced_moderate", (50, 200.0, 900.0), (50, 215.0, 1100.0), 0.95),
    ("unbalanced_fractional_df", (12, 480.0, 6400.0), (300, 455.0, 900.0), 0.95),
    ("tiny_samples", (2, 10.0, 4.0), (3, 14.5, 2.25), 0.90),
    ("df_near_one", (2, 100.0, 50.0), (40, 103.0, 0.5), 0.95),
    ("large_samples", (100_000, 812.0, 250_000.0), (120_000, 810.5, 260_000.0), 0.99),
    ("huge_df", (1_000_000, 350.0, 1.0e4), (1_000_000, 350.03, 1.02e4), 0.95),
    ("p_about_1e-12", (400, 120.0, 400.0), (380, 130.6, 441.0), 0.95),
    ("p_far_below_1e-12", (200, 300.0, 100.0), (200, 330.0, 144.0), 0.99),
    ("p_near_one", (30, 100.0, 25.0), (30, 100.0001, 25.0), 0.95),
    ("p_exactly_one", (25, 42.0, 9.0), (31, 42.0, 16.0), 0.90),
    ("one_variance_zero", (20, 5.0, 0.0), (15, 5.5, 1.5), 0.95),
    ("negative_diff_conf_90", (64, 1500.0, 90_000.0), (81, 1420.0, 70_000.0), 0.90),
]


def welch_from_summary(name, a, b, conf):
    (na, ma, va), (nb, mb, vb) = a, b
    res = stats.ttest_ind_from_stats(mb, math.sqrt(vb), nb, ma, math.sqrt(va), na, equal_var=False)
    sa2, sb2 = va / na, vb / nb
    se = math.sqrt(sa2 + sb2)
    df = (sa2 + sb2) ** 2 / (sa2**2 / (na - 1) + sb2**2 / (nb - 1))
    t = (mb - ma) / se
    assert close(float(res.statistic), t, 1e-13), (name, res.statistic, t)
    crit = stats.t.isf((1 - conf) / 2, df)
    diff = mb - ma
    return {
        "name": name,
        "n_a": na,
        "mean_a": ma,
        "var_a": va,
        "n_b": nb,
        "mean_b": mb,
        "var_b": vb,
        "confidence": conf,
        "t": float(res.statistic),
        "df": df,
        "p_value": float(res.pvalue),
        "diff": diff,
        "ci_low": diff - crit * se,
        "ci_high": diff + crit * se,
    }


def latencies(seed, n, median_ms, sigma):
    """Log-normal latencies rounded to 0.1 ms (so the JSON numbers are short and exact)."""
    rng = np.random.default_rng(seed)
    return [round(float(x), 1) for x in rng.lognormal(math.log(median_ms), sigma, n)]


WELCH_RAW_CASES = [
    ("handwritten", [812.0, 790.5, 845.2, 801.1, 777.9], [760.3, 742.8, 781.0, 755.5, 770.2, 749.9], 0.95),
    ("lognormal_small", latencies(1, 7, 400, 0.3), latencies(2, 9, 350, 0.4), 0.90),
    ("lognormal_medium", latencies(3, 40, 250, 0.5), latencies(4, 25, 230, 0.2), 0.95),
    ("lognormal_large", latencies(5, 2000, 180, 0.6), latencies(6, 1800, 172, 0.6), 0.99),
]


def welch_from_raw(name, a, b, conf):
    res = stats.ttest_ind(b, a, equal_var=False)
    ci = res.confidence_interval(confidence_level=conf)
    diff = float(np.mean(b) - np.mean(a))
    return {
        "name": name,
        "a": a,
        "b": b,
        "confidence": conf,
        "mean_a": float(np.mean(a)),
        "var_a": float(np.var(a, ddof=1)),
        "mean_b": float(np.mean(b)),
        "var_b": float(np.var(b, ddof=1)),
        "t": float(res.statistic),
        "df": float(res.df),
        "p_value": float(res.pvalue),
        "diff": diff,
        "ci_low": float(ci.low),
        "ci_high": float(ci.high),
    }


# ---------------------------------------------------------------------------------------------
# Distribution spot checks
# ---------------------------------------------------------------------------------------------


def distributions():
    out = []
    for x in [-8.0, -1.959963984540054, -0.5, 0.0, 0.3, 1.0, 2.5, 6.0]:
        out.append({"fn": "normal_cdf", "x": x, "value": float(stats.norm.cdf(x))})
    for p in [1e-12, 0.001, 0.05, 0.5, 0.9, 0.975, 0.995, 0.999999]:
        out.append({"fn": "normal_quantile", "p": p, "value": float(stats.norm.ppf(p))})
    for df, t in [(1.0, 1.0), (1.37, -2.2), (2.5, 0.4), (11.3, 3.1), (57.9, -1.7), (1e5, 2.0), (1e6, -4.5), (3.6, 25.0)]:
        out.append({"fn": "student_t_cdf", "x": t, "df": df, "value": float(stats.t.cdf(t, df))})
    for df, p in [(1.0, 0.975), (1.37, 0.95), (2.5, 0.005), (11.3, 0.995), (57.9, 0.9), (123.4, 0.025),
                  (1e5, 0.975), (1e6, 0.995), (4.2, 1e-6), (19999.5, 0.05)]:
        out.append({"fn": "student_t_quantile", "p": p, "df": df, "value": float(stats.t.ppf(p, df))})
    return out


def main():
    versions = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "statsmodels": statsmodels.__version__ if statsmodels is not None else None,
    }
    fixture = {
        "generated_by": {"script": "scripts/stats_reference.py", **versions},
        "proportion": [proportion_case(*c) for c in PROPORTION_CASES],
        "welch_summary": [welch_from_summary(*c) for c in WELCH_SUMMARY_CASES],
        "welch_raw": [welch_from_raw(*c) for c in WELCH_RAW_CASES],
        "distributions": distributions(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(fixture, indent=1) + "\n")
    n = sum(len(fixture[k]) for k in ("proportion", "welch_summary", "welch_raw"))
    print(f"wrote {OUT} ({n} test cases, {len(fixture['distributions'])} distribution points)", file=sys.stderr)
    for section in ("proportion", "welch_summary", "welch_raw"):
        for c in fixture[section]:
            stat = c.get("z", c.get("t"))
            print(f"  {section:14} {c['name']:28} stat={stat:+.6g} p={c['p_value']:.3g} df={c.get('df', '-')}",
                  file=sys.stderr)


if __name__ == "__main__":
    main()
