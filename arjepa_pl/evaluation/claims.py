"""The claims table: four claims made about AR and JEPA world models, the experiment of this
comparison that tests each, the measured numbers, and a verdict at this scale.

1. AR must model everything in the observation, unpredictable detail included; JEPA predicts in a
   learned space and may drop it. Test: every objective pretrained with and without unpredictable
   nuisance; the drop of probe accuracy (mean over the claim's tasks) from clean to nuisance, AR's
   against JEPA's; and what the nuisance costs the AR likelihood (bits/dim).
2. JEPA needs explicit collapse prevention. Test: the EMA teacher (and VICReg terms, where the JEPA
   run has them) against the ablation without either (targets from the encoder itself under
   stop-gradient); RankMe of the frozen features of held-out clips and probe accuracy.
3. AR gives exact likelihoods. Test: held-out bits/dim of the AR token model beside a uniform code
   distribution (an exact likelihood of the tokenised clip); JEPA defines none.
4. JEPA cannot generate. Test: AR rollouts against copying the last context frame, beside what a small
   pixel decoder trained on frozen features reconstructs (JEPA, AR and a random encoder).

Verdicts are rules on the numbers, stated here so they can be checked: a difference counts when it
exceeds twice its standard error over seeds (each seed is one pretraining); otherwise the result is
"inconclusive". "not testable here" says what is missing (an objective, a stage, or a JEPA that
learned nothing to drop).
"""

import math
import statistics
from dataclasses import dataclass, field
from typing import Optional

from arjepa_pl.evaluation.compare_plan import RANDOM_INIT, plain
from arjepa_pl.evaluation.report import Record, final, tasks_and_layers

SUPPORTED, CONTRADICTED, INCONCLUSIVE, UNTESTABLE = "supported", "contradicted", "inconclusive", "not testable here"


@dataclass
class ClaimRoles:
    """Which parts of the comparison test which claim (names of objectives, conditions and stages).

    Args:
        jepa / ar: the JEPA and the AR objective compared (claims 1 and 4).
        likelihood: the AR objective whose bits/dim is read (claim 3; e.g. the token model).
        collapse_ablation: JEPA without its collapse prevention (claim 2; `teacher: stop_grad`).
        clean / nuisance: the conditions without and with unpredictable nuisance (claim 1).
        probe: the classification probe stage whose accuracies are read.
        tasks: the probe tasks averaged in claims 1 and 2 (default: all).
        decoder / rollout: the decoder probe and the rollout (predict) stages (claim 4).
    """

    jepa: str
    ar: str
    probe: str
    likelihood: Optional[str] = None
    collapse_ablation: Optional[str] = None
    clean: str = ""
    nuisance: Optional[str] = None
    tasks: Optional[list[str]] = None
    decoder: Optional[str] = None
    rollout: Optional[str] = None


@dataclass
class Claim:
    claim: str
    experiment: str
    measured: str = ""
    verdict: str = UNTESTABLE
    why: str = ""
    numbers: dict = field(default_factory=dict)


def se_of_mean(values: list[float]) -> float:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.inf


def compare_means(a: list[float], b: list[float]) -> tuple[float, float]:
    """(mean(a) - mean(b), its standard error)."""
    return statistics.fmean(a) - statistics.fmean(b), math.hypot(se_of_mean(a), se_of_mean(b))


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """(mean of a - b, its standard error) for measurements paired by seed."""
    differences = [x - y for x, y in zip(a, b)]
    return statistics.fmean(differences), se_of_mean(differences)


def seed_values(records: list[Record], stage: Optional[str], objective: str, condition: str,
                metric: str) -> list[float]:
    rows = final(records, stage) if stage else [r for r in records if r.stage is None]
    return [r.metrics[metric] for r in sorted(rows, key=lambda r: r.seed)
            if (r.objective, r.condition) == (objective, condition) and metric in r.metrics
            and not math.isnan(r.metrics[metric])]


def task_accuracy(records: list[Record], roles: ClaimRoles, objective: str, condition: str) -> list[float]:
    """Per seed: the mean over the claim's tasks of the last probed layer's top-1, at the last checkpoint."""
    rows = [r for r in final(records, roles.probe) if (r.objective, r.condition) == (objective, condition)]
    table = {t: layers for t, layers in tasks_and_layers(rows).items() if roles.tasks is None or t in roles.tasks}
    values = []
    for r in rows:
        found = [r.metrics[f"val/{t}/l{layers[-1]}/top1"] for t, layers in table.items()
                 if f"val/{t}/l{layers[-1]}/top1" in r.metrics]
        if found:
            values.append(statistics.fmean(found))
    return values


def pct(values: list[float]) -> str:
    return f"{100 * statistics.fmean(values):.1f} %"


ONE_SEED = "one seed per arm gives no standard error: run >= 2 seeds for a verdict"


def judge(difference: float, se: float, positive: str, negative: str) -> tuple[str, str]:
    if math.isinf(se):
        return INCONCLUSIVE, ONE_SEED
    if difference > 2 * se:
        return SUPPORTED, positive
    if difference < -2 * se:
        return CONTRADICTED, negative
    return INCONCLUSIVE, f"the difference ({difference:+.3g}) is within 2 standard errors ({2 * se:.3g})"


def nuisance_claim(records: list[Record], roles: ClaimRoles, context: dict) -> Claim:
    claim = Claim("AR must model everything, unpredictable detail included; JEPA may drop it",
                  f"{roles.ar} and {roles.jepa} pretrained on '{roles.clean or 'clean'}' and '{roles.nuisance}' data; "
                  f"drop of {roles.probe} accuracy (mean over tasks); AR bits/dim with and without the nuisance")
    if roles.nuisance is None:
        claim.why = "the comparison has no nuisance condition"
        return claim
    acc = {(o, c): task_accuracy(records, roles, o, c)
           for o in (roles.ar, roles.jepa) for c in (roles.clean, roles.nuisance)}
    if not all(acc.values()):
        claim.why = f"needs {roles.probe} results of {roles.ar} and {roles.jepa} in both conditions"
        return claim
    drops = {o: compare_means(acc[(o, roles.clean)], acc[(o, roles.nuisance)]) for o in (roles.ar, roles.jepa)}
    parts = [f"{o}: {pct(acc[(o, roles.clean)])} → {pct(acc[(o, roles.nuisance)])} "
             f"(−{100 * drops[o][0]:.1f} ± {100 * drops[o][1]:.1f})" for o in (roles.ar, roles.jepa)]
    if roles.likelihood:
        bits = [seed_values(records, None, roles.likelihood, c, "val/bits_per_dim")
                for c in (roles.clean, roles.nuisance)]
        if all(bits):
            parts.append(f"{roles.likelihood} bits/dim {statistics.fmean(bits[0]):.4f} → "
                         f"{statistics.fmean(bits[1]):.4f}")
    claim.measured = "; ".join(parts)
    claim.numbers = {"drop": {o: d for o, (d, _) in drops.items()}}
    chance = context.get("chance_mean")
    jepa_clean = acc[(roles.jepa, roles.clean)]
    if any(len(v) < 2 for v in acc.values()):
        claim.verdict, claim.why = INCONCLUSIVE, ONE_SEED
        return claim
    if chance is not None and statistics.fmean(jepa_clean) - chance <= 2 * se_of_mean(jepa_clean):
        claim.why = (f"{roles.jepa}'s probe is at chance ({100 * chance:.0f} %) on clean data: it learned nothing it "
                     "could keep or drop")
        return claim
    per_seed = {o: [a - b for a, b in zip(acc[(o, roles.clean)], acc[(o, roles.nuisance)])]
                for o in (roles.ar, roles.jepa)}
    difference, se = compare_means(per_seed[roles.ar], per_seed[roles.jepa])
    claim.verdict, claim.why = judge(
        difference, se, f"the nuisance costs {roles.ar} {100 * difference:.1f} points more than {roles.jepa}",
        f"the nuisance costs {roles.jepa} {-100 * difference:.1f} points more than {roles.ar}")
    return claim


def collapse_claim(records: list[Record], roles: ClaimRoles, context: dict) -> Claim:
    ablation = roles.collapse_ablation
    claim = Claim("JEPA needs explicit collapse prevention",
                  f"{roles.jepa} (EMA teacher, VICReg terms where configured) against {ablation} (neither: "
                  "targets from the encoder itself under stop-gradient); RankMe of frozen features of held-out "
                  "clips, probe accuracy")
    if ablation is None:
        claim.why = "the comparison has no collapse ablation"
        return claim
    rows = final(records, roles.probe)
    condition = next((r.condition for r in rows if r.objective == ablation), None)
    if condition is None:
        claim.why = f"{ablation} was not probed"
        return claim
    layer = max((int(k.split("/")[1][1:]) for r in rows for k in r.metrics if k.startswith("features/l")), default=None)
    rank = {o: seed_values(records, roles.probe, o, condition, f"features/l{layer}/rankme")
            for o in (roles.jepa, ablation)}
    acc = {o: task_accuracy(records, roles, o, condition) for o in (roles.jepa, ablation)}
    if not all(rank.values()) or not all(acc.values()):
        claim.why = "needs RankMe (the feature cache's statistics) and probe accuracies of both"
        return claim
    ratio = statistics.fmean(rank[ablation]) / statistics.fmean(rank[roles.jepa])
    difference, se = compare_means(acc[roles.jepa], acc[ablation])
    claim.measured = (f"RankMe {statistics.fmean(rank[roles.jepa]):.1f} vs {statistics.fmean(rank[ablation]):.1f} "
                      f"(ratio {ratio:.2f}); accuracy {pct(acc[roles.jepa])} vs {pct(acc[ablation])}")
    claim.numbers = {"rankme_ratio": ratio, "accuracy_difference": difference}
    if math.isinf(se):
        claim.verdict, claim.why = INCONCLUSIVE, ONE_SEED
    elif ratio < 0.5 or difference > 2 * se:
        claim.verdict = SUPPORTED
        claim.why = ("without collapse prevention the features collapse (RankMe halves or worse)" if ratio < 0.5
                     else f"without collapse prevention the probe loses {100 * difference:.1f} points")
    elif ratio >= 0.8 and difference <= 2 * se:
        claim.verdict = CONTRADICTED
        claim.why = ("at this scale stop-gradient and the predictor alone keep the features from collapsing: the "
                     "EMA (and VICReg) change neither RankMe nor accuracy beyond noise")
    else:
        claim.verdict, claim.why = INCONCLUSIVE, "RankMe falls by 20-50 % without a loss of accuracy beyond noise"
    return claim


def likelihood_claim(records: list[Record], roles: ClaimRoles, context: dict) -> Claim:
    model = roles.likelihood
    claim = Claim("AR gives exact likelihoods", f"held-out bits/dim of {model} (exact for the tokenised clip) beside a "
                  f"uniform code distribution; {roles.jepa} defines no likelihood")
    if model is None:
        claim.why = "the comparison has no likelihood model"
        return claim
    conditions = list(dict.fromkeys(r.condition for r in records if r.objective == model and r.stage is None))
    bits = {c: seed_values(records, None, model, c, "val/bits_per_dim") for c in conditions}
    bits = {c: v for c, v in bits.items() if v}
    if not bits:
        claim.why = f"{model} logged no val/bits_per_dim"
        return claim
    uniform = context.get("uniform_bits_per_dim", {}).get(model)
    claim.measured = "; ".join(f"{c or 'bits/dim'}: {statistics.fmean(v):.4f} ± "
                               f"{statistics.stdev(v) if len(v) > 1 else 0:.4f}" for c, v in bits.items())
    claim.measured += f" (uniform codes: {uniform:.4f})" if uniform else ""
    below = uniform is None or all(statistics.fmean(v) < uniform for v in bits.values())
    claim.verdict = SUPPORTED
    claim.why = ("an exact, normalised likelihood of held-out clips, " + ("below the uniform baseline" if below else
                 "but not below the uniform baseline") + "; of the tokenised clip, not of its pixels")
    return claim


def generation_claim(records: list[Record], roles: ClaimRoles, context: dict) -> Claim:
    claim = Claim("JEPA cannot generate", f"{roles.rollout} of the AR models (PSNR of generated frames vs copying the "
                  f"last frame), beside {roles.decoder}: a small pixel decoder on frozen features (reconstruction)")
    if roles.rollout is None:
        claim.why = "the comparison has no rollout stage"
        return claim
    condition = roles.clean
    model = seed_values(records, roles.rollout, roles.ar, condition, "rollout/psnr")
    copy = seed_values(records, roles.rollout, roles.ar, condition, "rollout/copy_last_psnr")
    if not model:
        claim.why = f"{roles.ar} has no rollouts"
        return claim
    parts = [f"{roles.ar} rollout PSNR {statistics.fmean(model):.2f} dB vs copy-last {statistics.fmean(copy):.2f} dB"]
    if roles.decoder:
        for objective in (roles.jepa, roles.ar, RANDOM_INIT):
            psnr = seed_values(records, roles.decoder, objective, condition, "val/psnr")
            if psnr:
                parts.append(f"decoder on {objective}: {statistics.fmean(psnr):.2f} dB")
    claim.measured = "; ".join(parts)
    difference, se = paired(model, copy)  # the same clips: copy-last is each rollout's own baseline
    if math.isinf(se):
        claim.verdict, claim.why = INCONCLUSIVE, ONE_SEED
    elif difference > 2 * se:
        claim.verdict = SUPPORTED
        claim.why = ("AR generates frames better than copying; JEPA has no pixel output of its own, and what a decoder "
                     "reads back from its features is reconstruction, not generation")
    else:
        claim.why = "the AR rollouts do not beat copying the last frame: generation is not shown by either side"
    return claim


def claims_table(records: list[Record], roles, context: dict) -> list[str]:
    """Markdown lines of the claims table."""
    roles = roles if isinstance(roles, ClaimRoles) else ClaimRoles(**dict(roles))
    tests = (nuisance_claim, collapse_claim, likelihood_claim, generation_claim)
    claims = [test(records, roles, context) for test in tests]
    lines = ["Claims (verdict rules: arjepa_pl/evaluation/claims.py; a difference counts beyond 2 standard errors over "
             "seeds):", "", "| claim | experiment | measured | verdict at this scale |", "|---|---|---|---|"]
    for c in claims:
        lines.append(f"| {c.claim} | {c.experiment} | {c.measured or '—'} | **{c.verdict}**: {c.why} |")
    return lines + [""]


def claims_context(claims: Optional[ClaimRoles], probe_configs: dict, resolved: dict) -> dict:
    """What the claims' verdicts compare with: the chance accuracy of the claim's probe tasks, and the
    bits/dim of a uniform code distribution for every token objective (log2(codes) per patch of pixels).
    `probe_configs` and `resolved`: the probe stages' and the objectives' resolved configs, by name."""
    if claims is None:
        return {}
    context: dict = {}
    tasks = plain(probe_configs[claims.probe].get("model.init_args.tasks")) if claims.probe in probe_configs else None
    chances = [1 / t["num_classes"] for t in tasks or [] if claims.tasks is None or t["name"] in claims.tasks]
    if chances:
        context["chance_mean"] = sum(chances) / len(chances)
    uniform = {}
    for name, config in resolved.items():
        codes, encoder = config.get("model.init_args.num_codes"), plain(config.get("model.init_args.encoder"))
        if codes and encoder:
            args = encoder.get("init_args", {})
            values = args.get("in_chans", 3) * args.get("tubelet_size", 2) * args.get("patch_size", 16) ** 2
            uniform[name] = math.log2(codes) / values
    context["uniform_bits_per_dim"] = uniform
    return context
