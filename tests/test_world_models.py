"""The action-conditioned predictor and the two world models: no token sees a later frame or action (checked
by perturbing future inputs), cached rollouts equal teacher forcing, and both objectives train, report
their terms, draw media and reload from a checkpoint for planning."""

import pytest
import torch

from arjepa_pl.models import VisionTransformer
from arjepa_pl.models.action_predictor import ActionConditionedPredictor
from arjepa_pl.objectives import ACJEPA, ACARVideo
from data_modules import TwoRooms, TwoRoomsLayout
from data_modules.two_rooms_data import random_walk_actions, simulate

B, T, GRID, D = 3, 4, (2, 2), 16


def predictor() -> ActionConditionedPredictor:
    """Weights far from their (near-zero) initialisation, so that every path that exists shows."""
    torch.manual_seed(0)
    model = ActionConditionedPredictor(D, 8, GRID, embed_dim=16, depth=2, num_heads=2).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, 4, D, generator=g), torch.randn(B, T, 2, generator=g)


@pytest.mark.parametrize("step", range(T))
def test_no_token_sees_a_later_frame_or_action(step):
    model, (frames, actions) = predictor(), inputs()
    with torch.no_grad():
        out = model(frames, actions)
        later_frames, later_actions = frames.clone(), actions.clone()
        later_frames[:, step + 1:] += 5 * torch.randn_like(later_frames[:, step + 1:])
        later_actions[:, step + 1:] += 5 * torch.randn_like(later_actions[:, step + 1:])
        perturbed = model(later_frames, later_actions)
    assert torch.allclose(out[:, :step + 1], perturbed[:, :step + 1], atol=1e-5)
    if step + 1 < T:
        assert not torch.allclose(out[:, step + 1:], perturbed[:, step + 1:], atol=1e-3)


def test_each_step_sees_its_own_action_and_every_earlier_frame():
    model, (frames, actions) = predictor(), inputs()
    with torch.no_grad():
        out = model(frames, actions)
        own = actions.clone()
        own[:, 2] += 1.0
        assert (model(frames, own)[:, 2] - out[:, 2]).abs().max() > 1e-2
        first = frames.clone()
        first[:, 0] += 1.0
        assert (model(first, actions)[:, 3] - out[:, 3]).abs().max() > 1e-2


def test_cached_steps_equal_the_whole_sequence_and_one_step_is_teacher_forcing():
    model, (frames, actions) = predictor(), inputs()
    with torch.no_grad():
        full = model(frames, actions)
        caches = model.new_caches()
        stepped = torch.cat([model(frames[:, t:t + 1], actions[:, t:t + 1], caches, start=t) for t in range(T)], dim=1)
        assert torch.allclose(full, stepped, atol=1e-5)
        assert torch.allclose(model(frames[:, :1], actions[:, :1]), full[:, :1], atol=1e-5)
    with pytest.raises(ValueError, match="caches"):
        model(frames[:, :1], actions[:, :1], model.new_caches(), start=2)


def tiny_encoder() -> VisionTransformer:
    return VisionTransformer(embed_dim=16, depth=1, num_heads=2, patch_size=8, video=False)


def tiny(cls, **kwargs):
    torch.manual_seed(0)
    return cls(encoder=tiny_encoder(), image_size=16, predictor_embed_dim=16, predictor_depth=1, predictor_num_heads=2,
               rollout_steps=3, total_steps=10, **kwargs)


def batch(steps: int = T, size: int = 2):
    """Two-rooms windows at 16 x 16 pixels, normalised like TwoRoomsDataModule's."""
    sim = TwoRooms(TwoRoomsLayout(size=16))
    g = torch.Generator().manual_seed(2)
    actions = random_walk_actions(size, steps, g)
    states, applied = simulate(sim, sim.sample_free(size, g), actions)
    return {"frames": (sim.render(states) - 0.5) / 0.5, "actions": applied}


@pytest.mark.parametrize("cls", [ACJEPA, ACARVideo])
def test_a_one_step_rollout_is_the_first_teacher_forced_prediction(cls):
    model = tiny(cls).eval()
    b = batch()
    frames, actions = b["frames"], b["actions"]
    with torch.no_grad():
        context = model.context(frames[:, :T])
        output = model.predictor(context, actions)
        start = context[:, 0] if cls is ACJEPA else frames[:, 0]
        rolled = model.rollout_from(start, actions[:, :1])[:, 0]
        first = model.next_state(start, output[:, 0])
    assert torch.allclose(rolled, first, atol=1e-5)


@pytest.mark.parametrize("cls", [ACJEPA, ACARVideo])
def test_objectives_train_and_report_their_terms(cls):
    model = tiny(cls)
    b = batch()
    terms = model.terms(b)
    assert {"loss", "teacher_forced_loss", "rollout_loss"} <= set(terms) and torch.isfinite(terms["loss"])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = float(terms["loss"].detach())
    for _ in range(15):
        loss = model.terms(b)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        assert float(model.terms(b)["loss"]) < 0.7 * first
    media = model.eval().media(b)
    assert media["rollout"].ndim == 3 and media["rollout_video"].shape[0] == T


def test_acjepa_exposes_collapse_features_and_its_regularisers():
    model = tiny(ACJEPA, vicreg_var_coeff=1.0, vicreg_cov_coeff=0.04, temporal_coeff=0.5)
    b = batch()
    terms = model.terms(b)
    assert {"vicreg_var", "vicreg_cov", "temporal"} <= set(terms)
    context = model.context(b["frames"][:, :T])
    assert torch.allclose(terms["temporal"], (context[:, 1:] - context[:, :-1]).pow(2).mean())
    expected = (terms["teacher_forced_loss"] + terms["rollout_loss"] + terms["vicreg_var"] + 0.04 * terms["vicreg_cov"]
                + 0.5 * terms["temporal"])
    assert torch.allclose(terms["loss"], expected)
    features = model.collapse_features(batch())
    assert set(features) == {"target", "context", "predicted"} and features["target"].shape == (2, T, 4, 16)


def test_planning_interface_shapes_and_distances():
    jepa, ar = tiny(ACJEPA).eval(), tiny(ACARVideo).eval()
    frames01 = torch.rand(2, 3, 16, 16)
    actions = torch.rand(2, 5, 2) - 0.5
    for model, state_shape in ((jepa, (4, 16)), (ar, (3, 16, 16))):
        start, goal = model.encode_observation(frames01), model.encode_goal(frames01)
        predicted = model.predicted_states(start, actions)
        assert predicted.shape == (2, 5, *state_shape)
        distance = model.distance(predicted.unsqueeze(1), goal)
        assert distance.shape == (2, 1, 5) and (distance >= 0).all()
    ar.planning_cost = "latent"
    assert ar.distance(ar.predicted_states(ar.encode_observation(frames01), actions).unsqueeze(1),
                       ar.encode_goal(frames01)).shape == (2, 1, 5)
    ar.planning_cost = "pixles"
    with pytest.raises(ValueError, match="planning_cost"):
        ar.encode_goal(frames01)


def test_bad_configurations_are_clear_errors():
    with pytest.raises(ValueError, match="exactly one"):
        ACJEPA(image_size=16)
    with pytest.raises(ValueError, match="tubelet"):
        ACJEPA(VisionTransformer(embed_dim=16, depth=1, num_heads=2, patch_size=8, tubelet_size=2), image_size=16)
    with pytest.raises(ValueError, match="divisible"):
        ACARVideo(tiny_encoder(), image_size=20)
    model = tiny(ACJEPA)
    with pytest.raises(ValueError, match="frames"):
        model.terms({"video": torch.zeros(1)})


def test_acjepa_on_a_frozen_pretrained_encoder(tmp_path):
    from arjepa_pl.interop import save_feature_extractor
    from arjepa_pl.models import FeatureExtractor

    pretrained = tiny_encoder()
    path = tmp_path / "encoder.pt"
    save_feature_extractor(FeatureExtractor(pretrained), path, {"kind": "test"}, safetensors=False)
    model = ACJEPA(encoder_checkpoint=str(path), image_size=16, predictor_embed_dim=16, predictor_depth=1,
                   predictor_num_heads=2, total_steps=10)
    assert model.target_encoder is None and not any(p.requires_grad for p in model.encoder.parameters())
    assert torch.equal(model.encoder.blocks[0].attn.qkv.weight, pretrained.blocks[0].attn.qkv.weight)
    model.terms(batch())["loss"].backward()
    assert model.encoder.blocks[0].attn.qkv.weight.grad is None
    assert model.predictor.blocks[0].attn.qkv.weight.grad is not None
