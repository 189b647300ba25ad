"""Autoregressive building blocks: the block-causal mask, patches and targets, KV caches, the tokenizer,
sampling. Tiny models, no data files."""

import pytest
import torch

from arjepa_pl.models import (ByteGPT, KVCache, PatchKMeans, VisionTransformer, block_causal_mask, next_step_outputs,
                              normalize_patches, patchify, sample_logits, unpatchify)
from arjepa_pl.models.patches import hold_last_frame
from arjepa_pl.models.tokenizer import kmeans_plusplus
from arjepa_pl.models.vit import MLP
from arjepa_pl.objectives.ar_video import ARVideo
from arjepa_pl.objectives.ar_video_tokens import ARVideoTokens


def tiny_vit(**kw):
    args = dict(embed_dim=48, depth=2, num_heads=3, patch_size=8, tubelet_size=2)
    args.update(kw)
    return VisionTransformer(**args)


# -- block-causal mask ---------------------------------------------------------------------------------
@pytest.mark.parametrize("steps,per_step,prefix", [(4, 3, 0), (5, 2, 3), (1, 4, 0), (6, 1, 0)])
def test_block_causal_mask_hides_later_steps_and_shows_own_step(steps, per_step, prefix):
    mask = block_causal_mask(steps, per_step, prefix)
    step = torch.arange(steps).repeat_interleave(per_step)
    for q in range(steps * per_step):
        for k in range(steps * per_step):
            in_prefix = step[q] < prefix and step[k] < prefix
            assert bool(mask[q, k]) == bool(step[k] <= step[q] or in_prefix), (q, k)
    # Every token sees every token of its own step (the diagonal blocks are full).
    for t in range(steps):
        assert mask[t * per_step:(t + 1) * per_step, t * per_step:(t + 1) * per_step].all()


def test_text_causal_mask_is_lower_triangular():
    assert torch.equal(block_causal_mask(5, 1), torch.ones(5, 5, dtype=torch.bool).tril())


def test_outputs_of_a_step_do_not_depend_on_later_frames():
    torch.manual_seed(0)
    enc, head = tiny_vit().eval(), MLP(48, 32, 7)
    video = torch.randn(1, 3, 8, 16, 16)  # 4 steps of 2x2 tokens
    changed = video.clone()
    changed[:, :, 4:] += torch.randn_like(changed[:, :, 4:])  # steps 2 and 3 differ
    a, b = next_step_outputs(enc, head, video), next_step_outputs(enc, head, changed)
    torch.testing.assert_close(a[:, :8], b[:, :8])  # steps 0, 1 see only steps <= 1
    assert not torch.allclose(a[:, 8:], b[:, 8:])
    # With a 3-step bidirectional prefix, step 0 does see step 2.
    a, b = next_step_outputs(enc, head, video, prefix_steps=3), next_step_outputs(enc, head, changed, prefix_steps=3)
    assert not torch.allclose(a[:, :4], b[:, :4])


# -- patches and targets -------------------------------------------------------------------------------
def test_patchify_matches_the_encoder_token_order_and_round_trips():
    torch.manual_seed(0)
    enc = tiny_vit()
    video = torch.randn(2, 3, 4, 16, 24)
    patches = patchify(video, 2, 8)
    assert patches.shape == (2, 2 * 2 * 3, 3 * 2 * 8 * 8)
    conv = enc.patch_embed.proj
    tokens = conv(video).flatten(2).transpose(1, 2)
    torch.testing.assert_close(patches @ conv.weight.flatten(1).T + conv.bias, tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(unpatchify(patches, (2, 2, 3), 2, 8), video)


def test_per_patch_normalisation():
    torch.manual_seed(0)
    patches = torch.randn(2, 5, 96) * 3 + 7
    norm = normalize_patches(patches)
    torch.testing.assert_close(norm.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(norm.std(-1, unbiased=False), torch.ones(2, 5), atol=1e-4, rtol=0)
    # Invariant to each patch's own brightness and contrast: only its structure is a target.
    scaled = patches * torch.rand(2, 5, 1).add(0.5) + torch.randn(2, 5, 1)
    torch.testing.assert_close(normalize_patches(scaled), norm, atol=1e-4, rtol=1e-4)


def labelled_video(steps=4, h=2, w=2, tubelet=2, patch=8) -> torch.Tensor:
    """A clip whose every patch is filled with 100 * step + position: targets name their source."""
    values = (100 * torch.arange(steps)[:, None] + torch.arange(h * w)[None, :]).float().flatten()
    patches = values[None, :, None].expand(1, -1, 3 * tubelet * patch * patch)
    return unpatchify(patches, (steps, h, w), tubelet, patch)


@pytest.mark.parametrize("prefix", [0, 2])
def test_targets_are_the_same_patch_of_the_next_step(prefix):
    model = ARVideo(tiny_vit(), target_norm="global", prefix_steps=prefix)
    video = labelled_video()
    token_ids = torch.arange(16).float()[None, :, None]  # output n = token n = (step n // 4, position n % 4)
    targets = model.targets(video)[0]
    outputs, targets = model.shift(token_ids, targets, video)
    first = max(prefix - 1, 0)
    assert outputs.shape[1] == targets.shape[1] == (3 - first) * 4
    guess, _ = model.shift(model.targets(video)[1], model.targets(video)[0], video)
    for out, tgt, held in zip(outputs[0, :, 0].long().tolist(), targets[0, :, 0].tolist(), guess[0, :, 0].tolist()):
        step, pos = divmod(out, 4)
        assert tgt == 100 * (step + 1) + pos  # patch `pos` of the next step
        assert held == 100 * step + pos  # the copy-last baseline guesses the same patch of this step


def test_residual_targets_are_the_change_from_the_last_frame():
    model = ARVideo(tiny_vit(), residual=True)
    video = torch.randn(1, 3, 8, 16, 16)
    targets, copy_last = model.targets(video)
    guess, targets = model.shift(copy_last, targets, video)
    assert not guess.any()  # copying the last frame = predicting no change
    patches = patchify(video, 2, 8)
    held = hold_last_frame(patches, 3, 2)
    torch.testing.assert_close(targets, patches[:, 4:] - held[:, :-4])
    # hold_last_frame: every frame of the tubelet patch is the tubelet's last frame.
    last = video[:, :, 1::2].repeat_interleave(2, dim=2)
    torch.testing.assert_close(held, patchify(last, 2, 8))


def test_rollouts_refuse_per_patch_normalised_targets():
    model = ARVideo(tiny_vit(), target_norm="patch", rollout_context_frames=4)
    with pytest.raises(ValueError, match="target_norm='global'"):
        model.rollout(torch.randn(1, 3, 8, 16, 16), 4)


def test_clip_too_short_for_the_prefix_is_a_clear_error():
    model = ARVideo(tiny_vit(), prefix_steps=4)
    with pytest.raises(ValueError, match="no step to predict"):
        model.step_loss(torch.randn(1, 3, 8, 16, 16))


# -- KV caches -----------------------------------------------------------------------------------------
def test_cached_video_outputs_equal_full_recomputation():
    torch.manual_seed(0)
    enc, head = tiny_vit().eval(), MLP(48, 32, 5)
    video = torch.randn(2, 3, 8, 16, 16)
    full = next_step_outputs(enc, head, video, prefix_steps=2)
    caches = [KVCache() for _ in enc.blocks]
    parts = [next_step_outputs(enc, head, video[:, :, :4], prefix_steps=2, caches=caches)]
    for frames in (6, 8):  # one new step at a time
        parts.append(next_step_outputs(enc, head, video[:, :, :frames], prefix_steps=2, caches=caches))
    assert [p.shape[1] for p in parts] == [8, 4, 4]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tokens", [False, True])
def test_video_rollout_with_cache_equals_recomputation(tokens):
    torch.manual_seed(0)
    video = torch.randn(2, 3, 8, 16, 16)
    if tokens:
        model = ARVideoTokens(tiny_vit(), num_codes=16, rollout_context_frames=4)
        model.tokenizer.fit(patchify(video, 2, 8).reshape(-1, 384), iters=3)
    else:
        model = ARVideo(tiny_vit(), residual=True, rollout_context_frames=4)
    model.eval()
    cached, recomputed = model.rollout(video, 4), model.rollout(video, 4, use_cache=False)
    assert cached.shape == (2, 3, 4, 16, 16)
    torch.testing.assert_close(cached, recomputed, atol=1e-5, rtol=1e-5)
    if tokens:  # generated patches are codebook entries
        assert torch.isin(patchify(cached, 2, 8).reshape(-1, 384), model.tokenizer.codebook).all()


@pytest.mark.parametrize("grad", [True, False])
def test_gpt_cached_chunks_equal_full_forward(grad):
    torch.manual_seed(0)
    gpt = ByteGPT(embed_dim=32, depth=2, num_heads=2, max_seq_len=32).eval()
    idx = torch.randint(0, 256, (2, 20))
    full = gpt(idx)
    caches = gpt.new_caches()
    with torch.set_grad_enabled(grad):  # with autograd the cache concatenates; without, it fills buffers
        parts = [gpt(idx[:, i:j], caches) for i, j in ((0, 7), (7, 8), (8, 9), (9, 20))]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    assert len(caches[0]) == 20 and all(p.requires_grad == grad for p in parts)
    if not grad:  # the buffers grew by doubling (7 -> 16 -> 40 tokens), not by one copy per step
        assert caches[0].k is not None and caches[0].k.size(2) == 40
    with pytest.raises(ValueError, match="do not continue the cache"):  # another batch size
        caches[0].extend(torch.zeros(1, 2, 1, 16), torch.zeros(1, 2, 1, 16))


@pytest.mark.parametrize("temperature,top_k", [(0.0, None), (1.0, 5)])
def test_gpt_generation_with_cache_equals_full_recomputation(temperature, top_k):
    torch.manual_seed(0)
    gpt = ByteGPT(embed_dim=32, depth=2, num_heads=2, max_seq_len=16).eval()
    prompt = torch.randint(0, 256, (2, 5))
    # 40 new bytes run past max_seq_len twice: the window slides and the cache is rebuilt.
    runs = [gpt.generate(prompt, 40, temperature, top_k, use_cache=c, generator=torch.Generator().manual_seed(1))
            for c in (True, False)]
    assert runs[0].shape == (2, 45)
    assert torch.equal(runs[0][:, :5], prompt)
    assert torch.equal(runs[0], runs[1])


def test_gpt_refuses_positions_past_its_window():
    gpt = ByteGPT(embed_dim=32, depth=1, num_heads=2, max_seq_len=8)
    with pytest.raises(ValueError, match="max_seq_len"):
        gpt(torch.zeros(1, 9, dtype=torch.long))


# -- sampling ------------------------------------------------------------------------------------------
def test_sampling_temperature_and_top_k():
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 50)
    assert torch.equal(sample_logits(logits, 0.0), logits.argmax(-1))
    assert torch.equal(sample_logits(logits, 1.0, top_k=1), logits.argmax(-1))
    top3 = logits.topk(3, -1).indices
    draws = sample_logits(logits[:, :, None].expand(4, 3, 200, 50), 2.0, top_k=3)
    assert (draws[..., None] == top3[:, :, None]).any(-1).all()  # only the 3 most likely tokens
    assert len(draws.unique()) > 4  # and not always the same one
    with pytest.raises(ValueError):
        sample_logits(logits, -1.0)


# -- tokenizer -----------------------------------------------------------------------------------------
def blobs(k=8, per=50, dim=12, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=g) * 10
    return centres, (centres[:, None] + 0.1 * torch.randn(k, per, dim, generator=g)).reshape(-1, dim)


def test_tokenizer_round_trip_and_full_code_usage():
    centres, x = blobs()
    tok = PatchKMeans(8, 12)
    with pytest.raises(RuntimeError, match="not been fitted"):
        tok.encode(x)
    stats = tok.fit(x, iters=10)
    assert stats["codes_used"] == 8
    codes = tok.encode(x)
    assert torch.bincount(codes, minlength=8).min() == 50  # one code per blob, every code used
    torch.testing.assert_close(tok.decode(codes), x, atol=0.5, rtol=0)  # reconstruction within the blob noise
    all_codes = torch.arange(8)
    assert torch.equal(tok.encode(tok.decode(all_codes)), all_codes)  # decode then encode is the identity
    assert codes.view(8, 50).shape == tok.encode(x.view(8, 50, 12)).shape  # any leading shape
    with torch.autocast("cpu", dtype=torch.bfloat16):  # distances stay fp32 under mixed precision
        assert torch.equal(tok.encode(x), codes)


def test_kmeans_plusplus_seeds_every_cluster():
    # D^2 sampling picks one seed in each of 8 far-apart blobs (plain random init usually does not).
    centres, x = blobs(seed=3)
    seeds = kmeans_plusplus(x, 8, torch.Generator().manual_seed(0))
    nearest_blob = torch.cdist(seeds, centres).argmin(1)
    assert sorted(nearest_blob.tolist()) == list(range(8))


def test_tokenizer_revives_dead_codes_and_saves(tmp_path):
    _, x = blobs(k=4, per=100)
    tok = PatchKMeans(16, 12)  # more codes than clusters: Lloyd leaves some empty, they are revived
    assert tok.fit(x, iters=5)["codes_used"] == 16
    tok.save(tmp_path / "tok.pt", {"mse": 0.1})
    other = PatchKMeans(16, 12)
    assert other.load(tmp_path / "tok.pt") == {"mse": 0.1}
    torch.testing.assert_close(other.codebook, tok.codebook)
    with pytest.raises(ValueError, match="needs 8 of 12"):
        PatchKMeans(8, 12).load(tmp_path / "tok.pt")
    with pytest.raises(ValueError, match="cannot fit"):
        PatchKMeans(16, 12).fit(x[:10])
