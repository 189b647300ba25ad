"""Planners and model-predictive control: CEM and MPPI find the minimum of a known cost, the oracle world
model reaches its goals (through the door), costs are chunked without changing them, the episode set
is fixed by its seed, and the planning configs parse."""

from pathlib import Path

import pytest
import torch

from arjepa_pl.cli import main as cli_main
from arjepa_pl.errors import ConfigError
from arjepa_pl.planning import CEM, MPC, MPPI, Episodes, SimulatorWorldModel, colored_noise
from arjepa_pl.planning.optimizers import project, shift_plan
from arjepa_pl.planning.plan import check_layout, plan_arguments
from arjepa_pl.planning.world_models import step_weights
from data_modules import TwoRooms, TwoRoomsLayout

REPO = Path(__file__).resolve().parents[1]
SIM = TwoRooms(TwoRoomsLayout())


@pytest.mark.parametrize("planner", [CEM(num_elites=8, horizon=5, num_samples=64, iterations=12),
                                     MPPI(temperature=0.2, horizon=5, num_samples=64, iterations=12)],
                         ids=["cem", "mppi"])
def test_planners_find_the_minimum_of_a_known_cost(planner):
    g = torch.Generator().manual_seed(0)
    target = project(torch.rand(3, 5, 2, generator=g) * 1.6 - 0.8, 0.9)  # three problems, inside the bound

    def cost(actions):  # [B, K, H, A] -> [B, K]: squared distance to each problem's target sequence
        return (actions - target[:, None]).pow(2).sum(dim=(-2, -1))

    result = planner.plan(cost, torch.zeros(3, 5, 2), g)
    assert result.actions.shape == (3, 5, 2)
    assert (result.actions - target).abs().max() < 0.1, (result.actions - target).abs().max()
    assert (result.costs[1:] <= result.costs[:-1] + 1e-6).all()  # the mean is always re-scored: never worse
    assert torch.allclose(result.cost, cost(result.actions[:, None])[:, 0])


def test_planners_respect_the_action_bound():
    planner = MPPI(horizon=3, num_samples=32, iterations=6, action_bound=0.5)
    result = planner.plan(lambda a: -a[..., 0].sum(-1), torch.zeros(1, 3, 2), torch.Generator().manual_seed(0))
    # The best a bounded action can do is (0.5, 0): the plan presses against the bound, never past it.
    assert (result.actions.norm(dim=-1) <= 0.5 + 1e-6).all() and (result.actions[..., 0] > 0.4).all()


def test_coloured_noise_has_unit_variance_and_more_memory_for_larger_beta():
    g = torch.Generator().manual_seed(0)
    correlation = {}
    for beta in (0.0, 1.0, 2.0):
        x = colored_noise((4000, 8, 2), beta, g)
        assert x.std().item() == pytest.approx(1.0, abs=0.05)
        correlation[beta] = torch.corrcoef(torch.stack([x[:, 0, 0], x[:, 1, 0]]))[0, 1].item()
    assert abs(correlation[0.0]) < 0.05 < correlation[1.0] < correlation[2.0]


def test_bad_planner_settings_are_clear_errors():
    with pytest.raises(ValueError, match="num_elites"):
        CEM(num_elites=100, num_samples=10)
    with pytest.raises(ValueError, match="temperature"):
        MPPI(temperature=0)
    with pytest.raises(ValueError, match="init_mean"):
        MPPI(horizon=4).plan(lambda a: a.sum((-2, -1)), torch.zeros(1, 3, 2))
    with pytest.raises(ValueError, match="replan_every"):
        MPC(MPPI(horizon=4), replan_every=5)
    with pytest.raises(ValueError, match="weighting"):
        step_weights(4, "mean")


def test_shifted_plans_and_step_weights():
    plan = torch.arange(8.0).view(1, 4, 2)
    assert shift_plan(plan, 1).tolist() == [[[2.0, 3.0], [4.0, 5.0], [6.0, 7.0], [0.0, 0.0]]]
    assert step_weights(4, "ramp").tolist() == [0.25, 0.5, 0.75, 1.0]
    assert step_weights(3, "last").tolist() == [0.0, 0.0, 1.0]


def test_episode_sets_are_fixed_by_their_seed_and_mostly_cross_the_wall():
    a, b = Episodes.sample(SIM, 20, seed=7), Episodes.sample(SIM, 20, seed=7)
    assert torch.equal(a.starts, b.starts) and torch.equal(a.goals, b.goals)
    crossing = SIM.room(a.starts) != SIM.room(a.goals)
    assert crossing.sum() == 16 and SIM.is_free(a.starts).all() and SIM.is_free(a.goals).all()
    assert not torch.equal(Episodes.sample(SIM, 20, seed=8).starts, a.starts)


def test_the_oracle_world_model_reaches_the_goal_through_the_door():
    episodes = Episodes.sample(SIM, 12, seed=3, other_room_fraction=1.0)
    mpc = MPC(MPPI(horizon=8, num_samples=48, iterations=3, noise_beta=2.0), replan_every=2, max_steps=24)
    results = mpc.run(SimulatorWorldModel(SIM), SIM, episodes, seed=0)
    assert results.success.all(), results.final_distance
    assert (results.final_distance < mpc.success_radius).all() and (results.steps < 24).all()
    # Every visited position is a free one, and each episode's path changes room (through the door).
    assert SIM.is_free(results.trajectories).all()
    assert (SIM.room(results.trajectories[-1]) != SIM.room(episodes.starts)).all()
    assert results.predicted.shape[:2] == (12, 24) and results.first_plan.shape[:2] == (12, 8)
    summary = results.summary()
    assert summary["success_rate"] == 1.0 and summary["planning_seconds_per_action"] > 0
    random = mpc.run_random(SIM, episodes, seed=0).summary()
    assert random["success_rate"] < 0.5 and random["planner_calls"] == 0


def test_chunked_costs_equal_unchunked():
    model = SimulatorWorldModel(SIM)
    g = torch.Generator().manual_seed(0)
    start, goal = SIM.sample_free(5, g), SIM.sample_free(5, g)
    actions = torch.rand(5, 7, 4, 2, generator=g) * 2 - 1
    whole = model.trajectory_costs(start, goal, actions, "ramp", max_rollouts=10_000)
    assert torch.allclose(whole, model.trajectory_costs(start, goal, actions, "ramp", max_rollouts=7))
    predicted = model.predicted_states(start.repeat_interleave(7, 0), actions.flatten(0, 1)).view(5, 7, 4, 2)
    manual = (model.distance(predicted, goal) * step_weights(4, "ramp")).sum(-1)
    assert torch.allclose(whole, manual)


# plan*.yaml are plan configs, but for the benchmark's (dry-run in tests/test_plan_benchmark.py).
PLAN_CONFIGS = sorted(set((REPO / "configs").glob("plan*.yaml")) - {REPO / "configs/plan_benchmark.yaml"})


@pytest.mark.parametrize("config", PLAN_CONFIGS, ids=lambda p: p.name)
def test_every_planning_config_parses_and_builds(config):
    kwargs = plan_arguments(["--config", str(config)])
    assert isinstance(kwargs["planner"], (MPPI, CEM)) and isinstance(kwargs["layout"], TwoRoomsLayout)
    assert kwargs["planner"].horizon >= kwargs["replan_every"] and kwargs["world_model"] == "checkpoint"


def test_plan_oracle_and_random_through_the_cli_write_reports_and_media(tmp_path, capsys):
    for world_model in ("oracle", "random"):
        out = tmp_path / world_model
        cli_main(["plan", "--config", str(REPO / "configs/plan_tworooms.yaml"), "--world_model", world_model,
                  "--num_episodes", "6", "--media_episodes", "2", "--out_dir", str(out), "--wandb_project", "null"])
        assert (out / "results.json").is_file() and (out / "report.md").is_file() and (out / "episodes.csv").is_file()
        assert len(list((out / "media").glob("*.png"))) == 2 and len(list((out / "media").glob("*.mp4"))) == 2
    assert "| oracle | 6 | 100.0 |" in (tmp_path / "oracle" / "report.md").read_text()
    assert "[plan] random:" in capsys.readouterr().out


def test_plan_mistakes_are_short_messages_naming_the_key(tmp_path, capsys):
    config = str(REPO / "configs/plan_tworooms.yaml")
    for args, key in ((["--world_model", "oracle", "--ckpt_path", "x.ckpt"], "ckpt_path = 'x.ckpt'"),
                      (["--ckpt_path", str(tmp_path / "missing.ckpt")], "no checkpoint file there"),
                      (["--num_episodez", "3"], "num_episodez")):
        with pytest.raises(SystemExit) as stopped:
            cli_main(["plan", "--config", config, "--out_dir", str(tmp_path), *args])
        assert stopped.value.code == 2 and key in capsys.readouterr().err, args
    assert not (tmp_path / "results.json").exists()


def test_a_checkpoint_trained_in_another_layout_is_refused():
    other = {**TwoRoomsLayout().as_dict(), "max_step": 0.1}
    trained = {"datamodule_hyper_parameters": {"layout": other, "num_steps": 8}}
    with pytest.raises(ConfigError, match="layout.max_step") as error:
        check_layout(trained, TwoRoomsLayout(), "wm.ckpt")
    assert "0.1" in str(error.value)
    assert check_layout({**trained, "datamodule_hyper_parameters": {"layout": TwoRoomsLayout().as_dict(),
                                                                   "num_steps": 8}}, TwoRoomsLayout(), "wm.ckpt") == 8
