"""Prediction writers of the autoregressive objectives: they turn what `predict_step` returns into files
in the run directory (the objectives and models never write files).

RolloutWriter: per clip a PNG strip (top row: context | true future, bottom row: context | predicted
future) and an mp4 (truth beside the model, whose border is green on context frames and red on
generated ones); per horizon MSE / PSNR / SSIM of the rollout beside the copy-last-frame baseline,
printed and saved as rollout_metrics.json. TextSampleWriter: the sampled continuations of each prompt.
"""

import json
from pathlib import Path
from typing import Optional

from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image

from arjepa_pl.objectives.ar_metrics import HorizonMetrics
from arjepa_pl.pictures import rollout_frames, rollout_picture
from arjepa_pl.video_io import write_mp4


def _run_dir(trainer, output_dir: Optional[str], name: str) -> Path:
    path = Path(output_dir) if output_dir else Path(trainer.default_root_dir) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


class RolloutWriter(BasePredictionWriter):
    """Saves and scores video rollouts (predict_step returning context / prediction / truth in [0, 1]).

    Args:
        output_dir: where files go (default: <trainer.default_root_dir>/rollouts).
        max_clips: clips per process that get a PNG and an mp4 (all clips are scored).
        fps: frame rate of the mp4s.
    """

    def __init__(self, output_dir: Optional[str] = None, max_clips: int = 8, fps: int = 4):
        super().__init__(write_interval="batch")
        if max_clips < 0 or fps < 1:
            raise ValueError(f"max_clips must be >= 0 and fps >= 1, got {max_clips}, {fps}")
        self.output_dir, self.max_clips, self.fps = output_dir, max_clips, fps
        self.model_metrics: Optional[HorizonMetrics] = None
        self.baseline_metrics: Optional[HorizonMetrics] = None

    def on_predict_start(self, trainer, pl_module) -> None:
        self.dir = _run_dir(trainer, self.output_dir, "rollouts")
        self.model_metrics = self.baseline_metrics = None  # sized by the first batch
        self.written = self.clips = 0

    def write_on_batch_end(self, trainer, pl_module, prediction: dict, batch_indices, batch, batch_idx: int,
                           dataloader_idx: int) -> None:
        context, pred, truth = prediction["context"], prediction["prediction"], prediction["truth"]
        if self.model_metrics is None:
            self.context_frames, self.horizon = context.size(2), truth.size(2)
            self.model_metrics = HorizonMetrics(self.horizon).to(truth.device)
            self.baseline_metrics = HorizonMetrics(self.horizon).to(truth.device)
        assert self.baseline_metrics is not None  # sized with model_metrics
        self.model_metrics.update(pred, truth)
        self.baseline_metrics.update(context[:, :, -1:].expand_as(truth), truth)  # copy the last context frame
        index = prediction.get("index")
        for b in range(truth.size(0)):
            self.clips += 1
            if self.written >= self.max_clips:
                continue
            name = (f"clip{int(index[b]):05d}" if index is not None
                    else f"rank{trainer.global_rank}_clip{self.clips:05d}")
            Image.fromarray(rollout_picture([(context[b], pred[b], truth[b])], names=[name],
                                            title=f"{name}: rollout of the model at step {trainer.global_step}")
                            ).save(self.dir / f"{name}.png")
            write_mp4(self.dir / f"{name}.mp4", rollout_frames(context[b], pred[b], truth[b]), fps=self.fps)
            self.written += 1

    def on_predict_end(self, trainer, pl_module) -> None:
        if self.model_metrics is None:
            return
        assert self.baseline_metrics is not None  # sized with model_metrics
        model, baseline = self.model_metrics.compute(), self.baseline_metrics.compute()  # synced over ranks
        clips = int(self.model_metrics.clips)
        if trainer.global_rank != 0:
            return
        report = {"clips": clips, "context_frames": self.context_frames, "horizon_frames": self.horizon,
                  "model": {k: v.tolist() for k, v in model.items()},
                  "copy_last": {k: v.tolist() for k, v in baseline.items()}}
        (self.dir / "rollout_metrics.json").write_text(json.dumps(report, indent=2) + "\n")
        lines = [f"rollouts: {clips} clips, {self.context_frames} context frames -> {self.horizon} predicted; "
                 f"files in {self.dir}", f"{'horizon':>7} {'MSE model':>10} {'copy-last':>10} {'PSNR model':>11} "
                 f"{'copy-last':>10} {'SSIM model':>11} {'copy-last':>10}"]
        for h in range(self.horizon):
            lines.append(f"{h + 1:>7} {model['mse'][h]:>10.5f} {baseline['mse'][h]:>10.5f} {model['psnr'][h]:>11.2f} "
                         f"{baseline['psnr'][h]:>10.2f} {model['ssim'][h]:>11.4f} {baseline['ssim'][h]:>10.4f}")
        rank_zero_info("\n".join(lines))


class TextSampleWriter(BasePredictionWriter):
    """Writes each prompt and its sampled continuation to samples.txt (default in the run directory)
    and prints them."""

    def __init__(self, output_dir: Optional[str] = None):
        super().__init__(write_interval="batch")
        self.output_dir = output_dir

    def on_predict_start(self, trainer, pl_module) -> None:
        self.path = _run_dir(trainer, self.output_dir, "samples") / f"samples_rank{trainer.global_rank}.txt"
        self.path.write_text("")

    def write_on_batch_end(self, trainer, pl_module, prediction: dict, batch_indices, batch, batch_idx: int,
                           dataloader_idx: int) -> None:
        with self.path.open("a") as f:
            for prompt, sample in zip(prediction["prompt"], prediction["sample"]):
                text = f"=== prompt {prompt!r}\n{prompt}{sample}\n"
                f.write(text)
                print(text, flush=True)
