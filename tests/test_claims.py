"""The claims table's verdict rules, on hand-made records: each claim can come out supported,
contradicted, inconclusive or not testable, for the reason the table states."""

import pytest

from arjepa_pl.evaluation.claims import (
    CONTRADICTED,
    INCONCLUSIVE,
    SUPPORTED,
    UNTESTABLE,
    ClaimRoles,
    claims_table,
    collapse_claim,
    generation_claim,
    likelihood_claim,
    nuisance_claim,
)
from arjepa_pl.evaluation.report import Record

ROLES = ClaimRoles(jepa="vjepa", ar="ar", probe="attentive", likelihood="ar_tokens", collapse_ablation="sg",
                   clean="clean", nuisance="noisy", decoder="decoder", rollout="rollout")
JITTER = (-0.01, 0.0, 0.01)  # three seeds


def accuracy(objective: str, condition: str, value: float, rankme: float = 30.0) -> list[Record]:
    return [Record(objective, condition, seed, "attentive", 300, 1e12,
                   {"val/direction/l5/top1": value + j, "val/shape/l5/top1": value + j / 2, "features/l5/rankme": rankme + 10 * j})
            for seed, j in enumerate(JITTER)]


def nuisance_records(ar_clean, ar_noisy, jepa_clean, jepa_noisy) -> list[Record]:
    return (accuracy("ar", "clean", ar_clean) + accuracy("ar", "noisy", ar_noisy)
            + accuracy("vjepa", "clean", jepa_clean) + accuracy("vjepa", "noisy", jepa_noisy))


@pytest.mark.parametrize("numbers, verdict", [((0.9, 0.6, 0.8, 0.78), SUPPORTED), ((0.9, 0.88, 0.8, 0.5), CONTRADICTED),
                                              ((0.9, 0.8, 0.8, 0.7), INCONCLUSIVE), ((0.9, 0.6, 0.252, 0.25), UNTESTABLE)])
def test_nuisance_claim(numbers, verdict):
    claim = nuisance_claim(nuisance_records(*numbers), ROLES, {"chance_mean": 0.25})
    assert claim.verdict == verdict, claim
    assert "ar: 90.0 % →" in claim.measured
    if verdict == UNTESTABLE:
        assert "at chance" in claim.why


def test_nuisance_claim_reports_the_likelihood_cost_and_needs_its_inputs():
    records = nuisance_records(0.9, 0.6, 0.8, 0.78)
    records += [Record("ar_tokens", c, s, None, 300, 1e12, {"val/bits_per_dim": b}) for c, b in (("clean", 0.01),
                ("noisy", 0.05)) for s in range(3)]
    assert "ar_tokens bits/dim 0.0100 → 0.0500" in nuisance_claim(records, ROLES, {}).measured
    assert nuisance_claim(records, ClaimRoles(jepa="vjepa", ar="ar", probe="attentive"), {}).why == \
        "the comparison has no nuisance condition"
    one_seed = [r for r in records if r.seed == 0]
    assert nuisance_claim(one_seed, ROLES, {}).verdict == INCONCLUSIVE


@pytest.mark.parametrize("ablation_rank, ablation_accuracy, verdict", [(5.0, 0.8, SUPPORTED), (30.0, 0.5, SUPPORTED),
                                                                       (30.0, 0.8, CONTRADICTED), (18.0, 0.8, INCONCLUSIVE)])
def test_collapse_claim(ablation_rank, ablation_accuracy, verdict):
    records = accuracy("vjepa", "clean", 0.8, rankme=30.0) + accuracy("sg", "clean", ablation_accuracy, ablation_rank)
    claim = collapse_claim(records, ROLES, {})
    assert claim.verdict == verdict, claim
    assert claim.measured.startswith("RankMe 30.0 vs")


def test_likelihood_and_generation_claims():
    bits = [Record("ar_tokens", "clean", s, None, 300, 1e12, {"val/bits_per_dim": 0.01}) for s in range(3)]
    claim = likelihood_claim(bits, ROLES, {"uniform_bits_per_dim": {"ar_tokens": 0.0234}})
    assert claim.verdict == SUPPORTED and "below the uniform baseline" in claim.why and "0.0234" in claim.measured
    assert likelihood_claim([], ROLES, {}).verdict == UNTESTABLE

    def rollouts(model, copy):
        return [Record("ar", "clean", s, "rollout", 300, 1e12, {"rollout/psnr": model + j, "rollout/copy_last_psnr": copy})
                for s, j in enumerate(JITTER)]

    decoded = [Record("vjepa", "clean", s, "decoder", 300, 1e12, {"val/psnr": 18.0}) for s in range(3)]
    claim = generation_claim(rollouts(25.0, 22.0) + decoded, ROLES, {})
    assert claim.verdict == SUPPORTED and "decoder on vjepa: 18.00 dB" in claim.measured
    assert generation_claim(rollouts(21.0, 22.0), ROLES, {}).verdict == UNTESTABLE


def test_claims_table_has_one_row_per_claim():
    lines = claims_table(nuisance_records(0.9, 0.6, 0.8, 0.78), {"jepa": "vjepa", "ar": "ar", "probe": "attentive",
                                                                 "clean": "clean", "nuisance": "noisy"}, {})
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| claim")]
    assert len(rows) == 4 and "**supported**" in rows[0] and rows[1].endswith("the comparison has no collapse ablation |")
