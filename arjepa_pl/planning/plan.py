"""`python -m arjepa_pl plan --config configs/plan_tworooms.yaml --ckpt_path CKPT`: plan with a world model.

A fixed, seeded set of two-rooms episodes (start, goal; the goal in the other room for most) is run
under model-predictive control with a CEM or MPPI planner and the world model of CKPT (an ACJEPA or
ACARVideo checkpoint), or with the true simulator (`--world_model oracle`, the upper bound), or with
random actions (`--world_model random`, the floor). Reported: success rate (final distance to the goal
under `success_radius`), mean final distance, actions used, planning time per action (wall time in
the planner over every action taken; episodes are planned for together) and planning FLOPs per action.

Written to `out_dir`: results.json (the summary and every episode), episodes.csv, report.md, per
episode a PNG strip and an MP4 under media/ (observed frames with the goal; the planner's predicted
rollout beside them), and a W&B run (offline without a key or network) holding all of it.
"""

from __future__ import annotations

import csv
import inspect
import json
import time
from pathlib import Path
from typing import Literal, Optional

import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from lightning.pytorch.utilities import rank_zero_warn

from arjepa_pl.errors import ConfigError
from arjepa_pl.planning.media import write_episode_media
from arjepa_pl.planning.mpc import MPC, EpisodeResults, Episodes
from arjepa_pl.planning.optimizers import MPPI, SamplingPlanner
from arjepa_pl.planning.world_models import (
    CostWeighting,
    ObjectiveWorldModel,
    SimulatorWorldModel,
    WorldModel,
    load_objective,
)
from data_modules.two_rooms import TwoRooms, TwoRoomsLayout

RESULTS = "results.json"


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_layout(checkpoint: dict, layout: TwoRoomsLayout, ckpt_path: str) -> Optional[int]:
    """Error when the checkpoint's data came from another environment; returns the window length it
    was trained on (None when the checkpoint does not say)."""
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    trained = data.get("layout")
    if trained is not None:
        wanted = layout.as_dict()
        differ = {k: (trained.get(k), v) for k, v in wanted.items() if trained.get(k) != v}
        if differ:
            key, (trained_value, value) = sorted(differ.items())[0]
            others = ", ".join(f"{k}: trained {a!r}" for k, (a, _) in sorted(differ.items())[1:])
            raise ConfigError(f"layout.{key}", value, f"{ckpt_path} was trained with {trained_value!r}: plan in the "
                              "layout a world model was trained in" + (f" (also {others})" if others else ""))
    return data.get("num_steps")


def plan(
    ckpt_path: Optional[str] = None,
    world_model: Literal["checkpoint", "oracle", "random"] = "checkpoint",
    planner: Optional[SamplingPlanner] = None,
    layout: TwoRoomsLayout = TwoRoomsLayout(),
    num_episodes: int = 50,
    episode_seed: int = 1234,
    other_room_fraction: float = 0.8,
    replan_every: int = 2,
    max_steps: int = 24,
    success_radius: float = 0.06,
    cost_weighting: CostWeighting = "ramp",
    planning_cost: Optional[Literal["pixels", "latent"]] = None,
    seed: int = 0,
    max_rollouts: int = 4096,
    device: str = "auto",
    out_dir: str = "runs/plan",
    media_episodes: Optional[int] = None,
    fps: int = 4,
    wandb_project: Optional[str] = "arjepa_pl",
    weights_only: bool = True,
) -> dict:
    """Run the episodes with one world model (or baseline) and write the report; returns the summary.

    Args:
        ckpt_path: an ACJEPA / ACARVideo Lightning checkpoint (world_model: checkpoint).
        world_model: "checkpoint" (CKPT's model), "oracle" (the true simulator) or "random" (random actions).
        planner: CEM or MPPI with its settings (default: MPPI's defaults).
        layout: the environment; must be the one the world model was trained in.
        num_episodes / episode_seed / other_room_fraction: the episode set (the same for every world model).
        replan_every: actions taken from each plan before planning again.
        max_steps: actions an episode may take.
        success_radius: success = ending this close to the goal (units of the arena's side).
        cost_weighting: how a plan's predicted distances to the goal are combined: ramp, sum or last.
        planning_cost: for ACARVideo checkpoints, "pixels" or "latent" (null: the checkpoint's own setting).
        seed: the planner's random draws (and the random baseline's actions).
        max_rollouts: action sequences a world model rolls out at once (bounds memory).
        device: "auto" (a GPU if there is one), "cpu", "cuda", "cuda:1", ...
        out_dir: where the report, media and W&B files go.
        media_episodes: episodes that get a PNG strip and an MP4 (null: all, 0: none).
        fps: frame rate of the MP4s.
        wandb_project: W&B project of the run (null: no W&B).
        weights_only: torch.load's (false only for trusted checkpoints holding other pickled objects).
    """
    if (ckpt_path is not None) != (world_model == "checkpoint"):
        raise ConfigError("ckpt_path", ckpt_path, f"a checkpoint is planned with when world_model is 'checkpoint', and "
                          f"only then (world_model: {world_model})")
    planner = planner or MPPI()
    dev = pick_device(device)
    sim = TwoRooms(layout)
    mpc = MPC(planner, replan_every, max_steps, success_radius, cost_weighting, max_rollouts)
    episodes = Episodes.sample(sim, num_episodes, episode_seed, other_room_fraction).to(dev)
    start = time.perf_counter()
    if world_model == "random":
        results = mpc.run_random(sim, episodes, seed)
    else:
        model: WorldModel
        if world_model == "oracle":
            model = SimulatorWorldModel(sim)
        else:
            assert ckpt_path is not None  # checked above
            objective, checkpoint = load_objective(ckpt_path, dev, weights_only)
            trained_steps = check_layout(checkpoint, layout, ckpt_path)
            if trained_steps is not None and planner.horizon > trained_steps:
                rank_zero_warn(f"planning {planner.horizon} steps ahead with a model trained on windows of "
                               f"{trained_steps}: its later predictions use time positions it never saw")
            if planning_cost is not None:
                objective.planning_cost = planning_cost
            model = ObjectiveWorldModel(objective, sim)
        results = mpc.run(model, sim, episodes, seed, media=media_episodes != 0)
    summary = {**results.summary(), "eval_seconds": time.perf_counter() - start, "world_model": world_model,
               "checkpoint": ckpt_path, "device": str(dev), "planner": type(planner).__name__,
               "planner_args": {k: v for k, v in vars(planner).items()}, "horizon": planner.horizon}
    write_report(results, summary, sim, episodes, Path(out_dir), media_episodes, fps, wandb_project)
    return summary


def success_by_room(rows: list[dict]) -> dict:
    """Success rates of the episodes whose goal is in the start's room and of those that need the door
    (None where there are none), from the per-episode rows of results.json."""
    rates = {}
    for key, other in (("success_rate_same_room", False), ("success_rate_other_room", True)):
        hits = [r["success"] for r in rows if r["other_room"] == other]
        rates[key] = sum(hits) / len(hits) if hits else None
    return rates


def report_lines(summary: dict) -> str:
    flops = summary.get("planning_flops_per_action")
    def percent(key: str) -> str:
        return "—" if summary.get(key) is None else f"{100 * summary[key]:.1f}"

    return ("| world model | episodes | success (%) | same room / other room (%) | final distance | steps "
            "| planning ms / action | planning GFLOPs / action |\n"
            "|---|---|---|---|---|---|---|---|\n"
            f"| {summary['name']} | {summary['episodes']} | {100 * summary['success_rate']:.1f} | "
            f"{percent('success_rate_same_room')} / {percent('success_rate_other_room')} | "
            f"{summary['final_distance']:.3f} | {summary['steps']:.1f} | "
            f"{1000 * summary['planning_seconds_per_action']:.1f} | "
            f"{'—' if flops is None else f'{flops / 1e9:.2f}'} |\n")


def write_report(results: EpisodeResults, summary: dict, sim: TwoRooms, episodes: Episodes, out: Path,
                 media_episodes: Optional[int], fps: int, wandb_project: Optional[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"episode": i, "start_x": float(s[0]), "start_y": float(s[1]), "goal_x": float(g[0]), "goal_y": float(g[1]),
             "other_room": bool(sim.room(s) != sim.room(g)), "success": bool(results.success[i]),
             "final_distance": float(results.final_distance[i]), "steps": int(results.steps[i])}
            for i, (s, g) in enumerate(zip(episodes.starts.cpu(), episodes.goals.cpu()))]
    summary.update(success_by_room(rows))
    with open(out / "episodes.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    media = []
    if media_episodes != 0:
        media = write_episode_media(results, sim, episodes.to("cpu"), out / "media", media_episodes, fps)
    text = report_lines(summary)
    (out / "report.md").write_text(text)
    tmp = out / f".{RESULTS}.tmp"
    tmp.write_text(json.dumps({"summary": summary, "episodes": rows}, indent=2, default=str) + "\n")
    tmp.replace(out / RESULTS)  # last, atomically: its presence means the evaluation is complete
    print(text, end="")
    if wandb_project:
        log_to_wandb(summary, rows, media, out, wandb_project, text)


def log_to_wandb(summary: dict, rows: list[dict], media: list[Path], out: Path, project: str, text: str) -> None:
    """The summary, the episode table and the media as one W&B run of job type 'plan'."""
    import wandb

    from arjepa_pl.loggers import choose_mode, pinned_run_id

    mode, why = choose_mode(None, connect_timeout=5.0)
    if why:
        print(f"[plan] W&B {mode}: {why}")
    config = {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool, dict))}
    run = wandb.init(project=project, dir=str(out), id=pinned_run_id(out), resume="allow",
                     mode=mode, job_type="plan",  # type: ignore[arg-type]
                     name=f"plan-{summary['name']}-{out.name}", config=config, reinit="finish_previous")
    logged = {"plan/episodes": wandb.Table(columns=list(rows[0]), data=[list(r.values()) for r in rows]),
              "plan/report": wandb.Html(f"<pre>{text}</pre>")}
    for path in media:
        kind = wandb.Image if path.suffix == ".png" else wandb.Video
        logged[f"plan/media/{path.stem}"] = kind(str(path))
    run.log(logged)
    for key in ("success_rate", "final_distance", "steps", "planning_seconds_per_action"):
        run.summary[f"plan/{key}"] = summary[key]
    run.finish()


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m arjepa_pl plan", description=__doc__.split("\n\n")[0], parser_mode="omegaconf+")
    p.add_argument("--config", action=ActionConfigFile, help="a planning config (configs/plan_tworooms.yaml)")
    p.add_function_arguments(plan)
    return p


def plan_arguments(argv: Optional[list[str]] = None) -> dict:
    """The keyword arguments of `plan` that a command line gives (classes instantiated)."""
    p = parser()
    init = p.instantiate_classes(p.parse_args(argv))
    return {name: init[name] for name in inspect.signature(plan).parameters}


def main(argv: Optional[list[str]] = None) -> None:
    kwargs = plan_arguments(argv)
    summary = plan(**kwargs)
    print(f"[plan] {summary['name']}: {100 * summary['success_rate']:.1f} % success over {summary['episodes']} "
          "episodes "
          f"in {summary['eval_seconds'] / 60:.1f} min; report in {kwargs['out_dir']}")
