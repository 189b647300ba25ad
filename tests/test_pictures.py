"""Pictures that explain themselves: the labelled mask pictures (title, frames, dropped counts,
legend) and rollout pictures (truth / model rows, context and horizon columns) hold the bare
pictures unchanged, with the text around them."""

import numpy as np
import torch

from arjepa_pl.callbacks.media import describe
from arjepa_pl.masks import MaskConfig, MultiBlock2DConfig
from arjepa_pl.pictures import annotate, mask_pictures, rollout_picture, rollout_strip, swatch


def contains(page: np.ndarray, picture: np.ndarray) -> bool:
    """Whether `picture` appears unchanged somewhere in `page`."""
    h, w = picture.shape[:2]
    for y, x in zip(*np.nonzero((page[:, :, 0] == picture[0, 0, 0]))):
        if y + h <= page.shape[0] and x + w <= page.shape[1] and (page[y:y + h, x:x + w] == picture).all():
            return True
    return False


def test_labelled_mask_picture_is_the_bare_one_with_text_around():
    torch.manual_seed(0)
    video = torch.randn(2, 3, 4, 8, 8)
    # A (2, 2, 2) grid; clip 1's context was cut to clip 0's length: its token 6 is in neither list.
    masks = [{"context": torch.tensor([[0, 4], [0, 2]]), "target": torch.tensor([[3, 7], [1, 3]])}]
    args = dict(tubelet_size=2, patch_size=4, mean=(0.5,) * 3, std=(0.5,) * 3, num_frames=2, min_size=8)
    bare = mask_pictures(video, masks, **args)["masks0"]
    page = mask_pictures(video, masks, titles=["masks0 at step 300: num_blocks 8"], **args)["masks0"]
    assert page.shape[0] > bare.shape[0] + 60 and page.shape[1] >= 480  # title, labels, three legend rows
    assert contains(page, bare)
    assert contains(page, swatch("target")) and contains(page, swatch("dropped"))


def test_image_masks_with_several_target_blocks_are_drawn():
    images = torch.zeros(1, 3, 8, 8)  # I-JEPA: images, and targets [B, blocks, K]
    masks = [{"context": torch.tensor([[0]]), "target": torch.tensor([[[1], [2]]])}]
    picture = mask_pictures(images, masks, tubelet_size=2, patch_size=4, mean=(0.5,) * 3, std=(0.5,) * 3,
                            min_size=8)["masks0"]
    assert picture.shape == (8, 8, 3)
    assert (picture[4:, 4:] == 32).all()  # token 3: neither context nor a target block
    assert describe(MaskConfig(8, (0.15, 0.15))) == "num_blocks 8, spatial_scale 0.15, temporal_scale 1"
    assert describe(MultiBlock2DConfig()).startswith("num_targets 4, target_scale 0.15-0.2")


def test_rollout_picture_labels_rows_and_horizons():
    context, pred, truth = torch.zeros(3, 2, 8, 8), torch.full((3, 3, 8, 8), 0.5), torch.ones(3, 3, 8, 8)
    page = rollout_picture([(context, pred, truth)] * 2, title="rollouts at step 300")
    strip = rollout_strip(context, pred, truth)
    assert contains(page, strip)
    assert page.shape[0] > 2 * strip.shape[0] + 30


def test_annotate_wraps_long_text_into_the_page():
    picture = np.zeros((10, 10, 3), np.uint8)
    short = annotate(picture, legend=[(swatch("context"), "word")], min_width=200)
    long = annotate(picture, legend=[(swatch("context"), "word " * 100)], min_width=200)
    assert short.shape[1] == long.shape[1] == 200 and long.shape[0] > short.shape[0] + 40
