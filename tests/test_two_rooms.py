"""The two-rooms environment and its offline data: physics (walls block, the door passes, actions are
clipped, determinism), rendering, and a data set generated atomically and deterministically, read as
windows that resume exactly mid-epoch."""

import json

import numpy as np
import pytest
import torch

from data_modules import TwoRooms, TwoRoomsDataModule, TwoRoomsLayout
from data_modules.two_rooms_data import ensure_two_rooms, generate_two_rooms, two_rooms_params
from data_modules.two_rooms_module import TwoRoomsWindows

LAYOUT = TwoRoomsLayout()
SIM = TwoRooms(LAYOUT)
LEFT_FACE = LAYOUT.wall_left - LAYOUT.agent_radius
RIGHT_FACE = LAYOUT.wall_right + LAYOUT.agent_radius


def test_the_wall_blocks_and_the_agent_slides_along_it():
    y = 0.15  # well above the door
    start = torch.tensor([[LEFT_FACE - 0.05, y]])
    right = SIM.step(start, torch.tensor([[0.2, 0.0]]))
    assert right[0, 0] == pytest.approx(LEFT_FACE) and right[0, 1] == pytest.approx(y)
    # Diagonal into the wall: x stops at the face, y still moves.
    slide = SIM.step(start, torch.tensor([[0.1, 0.1]]))
    assert slide[0, 0] == pytest.approx(LEFT_FACE) and slide[0, 1] == pytest.approx(y + 0.1)
    # From the right side too, and never through it whatever the step.
    back = SIM.rollout(torch.tensor([[RIGHT_FACE + 0.1, y]]), torch.tensor([[[-0.2, 0.0]] * 5]))
    assert (back[..., 0] >= RIGHT_FACE - 1e-6).all()


def test_the_door_lets_the_agent_through_and_holds_it_between_its_posts():
    start = torch.tensor([[LEFT_FACE - 0.1, LAYOUT.door_y]])
    crossed = SIM.rollout(start, torch.tensor([[[0.2, 0.0]] * 3]))
    assert crossed[0, -1, 0] > RIGHT_FACE and SIM.room(crossed[0, -1]) == 1
    # Inside the doorway, moving up stops at the door's edge.
    inside = torch.tensor([[LAYOUT.wall_x, LAYOUT.door_y]])
    up = SIM.step(inside, torch.tensor([[0.0, -0.2]]))
    assert up[0, 1] == pytest.approx(LAYOUT.door[0]) and SIM.is_free(up).all()


def test_actions_are_clipped_to_the_largest_step_and_the_border_holds():
    start = torch.tensor([[0.25, 0.5]])
    moved = SIM.step(start, torch.tensor([[0.0, 3.0]]))  # 15 x the largest step, straight down
    assert moved[0, 1] - 0.5 == pytest.approx(LAYOUT.max_step)
    clipped = SIM.clip_actions(torch.tensor([[3.0, 4.0], [0.01, 0.0]]))
    assert clipped[0].norm() == pytest.approx(LAYOUT.max_step) and clipped[0, 0] / clipped[0, 1] == pytest.approx(0.75)
    assert torch.equal(clipped[1], torch.tensor([0.01, 0.0]))
    lo, hi = LAYOUT.bounds
    corner = SIM.rollout(start, torch.tensor([[[-1.0, -1.0]] * 6]))[0, -1]
    assert torch.allclose(corner, torch.tensor([lo, lo]))
    assert torch.allclose(SIM.step(torch.tensor([[hi, hi]]), torch.tensor([[1.0, 1.0]])), torch.tensor([[hi, hi]]))


def test_physics_is_deterministic_and_batched_equals_one_by_one():
    g = torch.Generator().manual_seed(0)
    starts = SIM.sample_free(64, g)
    actions = torch.randn(64, 10, 2, generator=g) * 0.3
    batched = SIM.rollout(starts, actions)
    assert torch.equal(batched, SIM.rollout(starts, actions))
    single = torch.cat([SIM.rollout(starts[i:i + 1], actions[i:i + 1]) for i in range(64)])
    assert torch.equal(batched, single)
    assert SIM.is_free(batched).all()


def test_rendering_shows_the_agent_where_it_is_and_the_goal_ring_only_when_asked():
    frames = SIM.render(torch.tensor([[0.25, 0.25], [0.75, 0.75]]))
    S = LAYOUT.size
    red = frames[:, 0] - frames[:, 1]  # the agent is red, floor and walls grey
    assert red[0, S // 4, S // 4] > 0.5 and red[0, 3 * S // 4, 3 * S // 4] < 0.1
    assert red[1, 3 * S // 4, 3 * S // 4] > 0.5
    with_goal = SIM.render(torch.tensor([[0.25, 0.25]]), goals=torch.tensor([[0.75, 0.75]]))
    assert (with_goal[0, 1] - frames[0, 1]).abs().max() > 0.5  # green ring around the goal
    assert frames.shape == (2, 3, S, S) and frames.min() >= 0 and frames.max() <= 1


def test_the_glow_makes_pixel_error_fall_as_the_agent_nears_the_goal():
    glowing = TwoRooms(TwoRoomsLayout(glow_radius=0.25))
    goal = glowing.render(torch.tensor([[0.8, 0.5]]))
    path = torch.stack([torch.linspace(0.1, 0.8, 8), torch.full((8,), 0.5)], dim=-1)  # through the door
    error = (glowing.render(path) - goal).pow(2).mean(dim=(-3, -2, -1))
    assert (error.diff() < 0).all(), error
    plain = (SIM.render(path) - SIM.render(torch.tensor([[0.8, 0.5]]))).pow(2).mean(dim=(-3, -2, -1))
    assert torch.allclose(plain[:4], plain[0].expand(4), rtol=0.05)  # without: flat beyond the disc
    assert torch.equal(TwoRooms(TwoRoomsLayout(glow_radius=0.0)).render(path), SIM.render(path))


def test_generation_is_deterministic_and_the_set_is_versioned(tmp_path):
    params = two_rooms_params(LAYOUT, num_train=20, num_val=4, trajectory_length=6, seed=3, policy={})
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    generate_two_rooms(a, params)
    generate_two_rooms(b, params)
    for name in ("layout.json", "train/states.npy", "train/actions.npy", "val/states.npy"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    directory = ensure_two_rooms(tmp_path / "cache", params)
    index = json.loads((directory / "index.json").read_text())
    assert index["params"] == params and set(index["files"]) >= {"train/states.npy", "val/actions.npy"}
    states, actions = np.load(directory / "train/states.npy"), np.load(directory / "train/actions.npy")
    assert states.shape == (20, 7, 2) and actions.shape == (20, 6, 2)
    assert (np.linalg.norm(actions, axis=-1) <= 1 + 1e-6).all()
    # The stored actions replay the stored states in the simulator.
    replay = SIM.rollout(torch.from_numpy(states[:, 0]), torch.from_numpy(actions) * LAYOUT.max_step)
    assert torch.allclose(replay, torch.from_numpy(states[:, 1:]), atol=1e-6)
    # Other parameters: another folder, side by side.
    other = ensure_two_rooms(tmp_path / "cache", {**params, "seed": 4})
    assert other != directory and directory.is_dir()


def test_generation_is_atomic_a_crash_leaves_nothing_trusted_and_damage_is_repaired(tmp_path, monkeypatch):
    import data_modules.two_rooms_data as data

    params = two_rooms_params(LAYOUT, num_train=8, num_val=2, trajectory_length=4, seed=0, policy={})

    def crash(tmp, params):
        (tmp / "layout.json").write_text("{}")
        raise RuntimeError("killed mid-generation")

    monkeypatch.setattr(data, "generate_two_rooms", crash)
    with pytest.raises(RuntimeError, match="killed"):
        data.ensure_two_rooms(tmp_path, params)
    assert not any(p.name.startswith("v") for p in tmp_path.iterdir())  # nothing half-written under the real name
    monkeypatch.undo()
    directory = data.ensure_two_rooms(tmp_path, params)
    states = directory / "train/states.npy"
    good = states.read_bytes()
    states.write_bytes(good[:-8])  # damaged: regenerated on the next call
    assert data.ensure_two_rooms(tmp_path, params) == directory and states.read_bytes() == good


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return dict(data_dir=str(tmp_path_factory.mktemp("two_rooms")), num_train=12, num_val=4, trajectory_length=6,
                num_steps=3, batch_size=4, num_workers=0)


def test_windows_carry_frames_actions_and_states_that_agree(small_data):
    dm = TwoRoomsDataModule(**small_data)
    dm.setup("fit")
    assert len(dm.train_dataset) == 12 * 4  # 4 windows of 3 actions in each 6-step trajectory
    batch = next(iter(dm.train_dataloader()))
    B, T = 4, 3
    assert batch["frames"].shape == (B, T + 1, 3, 64, 64) and batch["actions"].shape == (B, T, 2)
    assert batch["states"].shape == (B, T + 1, 2)
    stepped = SIM.rollout(batch["states"][:, 0], batch["actions"] * LAYOUT.max_step)
    assert torch.allclose(stepped, batch["states"][:, 1:], atol=1e-6)
    rendered = (SIM.render(batch["states"]) - 0.5) / 0.5
    assert torch.allclose(rendered, batch["frames"], atol=1e-6)


def test_mid_epoch_resume_serves_exactly_the_remaining_windows(small_data):
    def loader():
        dm = TwoRoomsDataModule(**small_data, seed=5)
        dm.setup("fit")
        return dm.train_dataloader()

    full = [b["index"].tolist() for b in loader()]
    first = loader()
    it = iter(first)
    seen = [next(it)["index"].tolist() for _ in range(3)]
    state = first.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    assert seen + [b["index"].tolist() for b in resumed] == full
    assert sorted(i for b in full for i in b) == sorted(set(i for b in full for i in b))  # each window once


def test_bad_settings_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="num_steps"):
        TwoRoomsDataModule(data_dir=str(tmp_path), trajectory_length=4, num_steps=5)
    with pytest.raises(ValueError, match="max_step"):
        TwoRoomsLayout(max_step=0.0)
    with pytest.raises(ValueError, match="door"):
        TwoRoomsLayout(door_y=0.95)
    dm = TwoRoomsDataModule(data_dir=str(tmp_path), num_train=1, num_val=0, trajectory_length=4, num_steps=4,
                            batch_size=8, num_workers=0)
    with pytest.raises(ValueError, match="batch_size"):
        dm.setup("fit")


def test_dataset_reads_single_windows_like_batches(small_data, tmp_path):
    dm = TwoRoomsDataModule(**small_data)
    directory = dm.directory()
    windows = TwoRoomsWindows(directory, "val", num_steps=3, layout=LAYOUT)
    single = windows[(5, 2, 7)]
    batched = windows.__getitems__([(5, 2, 7)])[0]
    assert single["index"] == 5 and single["epoch"] == 2 and single["position"] == 7
    assert torch.equal(single["frames"], batched["frames"])
