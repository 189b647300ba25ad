"""FSDP2 as a Lightning strategy: every rank holds 1/N of the weights, gradients and optimizer state.

    trainer:
      strategy:
        class_path: arjepa_pl.strategies.FSDP2Strategy
        init_args: {save_distributed_checkpoint: true}

or, by name, `--trainer.strategy fsdp2` (sharded checkpoints) / `fsdp2_full` (one full file).

The sharding itself is done by the objective's `configure_model` (arjepa_pl.parallel.apply_fsdp2)
on the device mesh this strategy builds; the EMA teacher is sharded exactly like the student.
"""

from datetime import timedelta
from typing import Any, Optional

from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy, StrategyRegistry

from arjepa_pl.checkpoints import save_sharded_atomically, wrap_load_errors


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ModelParallelStrategy with pure data-parallel sharding and atomic sharded checkpoints.

    - The mesh is one "data_parallel" dimension over all ranks (ModelParallelStrategy's "auto" would
      make one data-parallel group per node and tensor-parallel groups inside nodes).
    - `save_distributed_checkpoint=True` (default): each rank writes its own shards
      (torch.distributed.checkpoint) into a directory — fast, no rank gathers the full model, and it
      resumes on any number of ranks. False: one full `.ckpt` file gathered on rank 0, loadable
      anywhere (also by DDP or a single process).
    - A sharded checkpoint is written into a hidden temporary directory and swapped into place when
      every rank has finished, so a kill during the save never breaks the previous checkpoint.
    - Loading defaults to weights_only=True, and a checkpoint that fails to load is an error naming it.
    """

    def __init__(
        self,
        save_distributed_checkpoint: bool = True,
        process_group_backend: Optional[str] = None,
        timeout: Optional[timedelta] = default_pg_timeout,
    ) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint,
                         process_group_backend=process_group_backend, timeout=timeout)

    def setup_environment(self) -> None:
        # Known before the process group exists: devices per node x nodes.
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Optional[Any] = None) -> None:
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)  # via the (atomic) CheckpointIO
        save_sharded_atomically(self, filepath, lambda tmp: super(FSDP2Strategy, self).save_checkpoint(
            checkpoint, tmp, storage_options))

    def load_checkpoint(self, checkpoint_path, weights_only: Optional[bool] = None) -> dict[str, Any]:
        weights_only = True if weights_only is None else weights_only
        return wrap_load_errors(
            checkpoint_path, lambda: super(FSDP2Strategy, self).load_checkpoint(checkpoint_path, weights_only))


# Names for `--trainer.strategy`, registered when this module is imported (the CLI imports it).
for _name, _sharded in (("fsdp2", True), ("fsdp2_full", False)):
    if _name not in StrategyRegistry:
        StrategyRegistry.register(_name, FSDP2Strategy, description="FSDP2 per transformer block, teacher co-sharded",
                                  save_distributed_checkpoint=_sharded)

__all__ = ["FSDP2Strategy"]
