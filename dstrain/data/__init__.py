"""Shards -> masked MLM batches (streaming WebDataset shards, rank x worker split, dynamic masking, resumable).

    from dstrain.data import ShardSet, MLMMasker, build_loader, build_eval_loader
    train = ShardSet.open(data_dir, split="train", strict=True)
    masker = MLMMasker.for_shards(train, mlm_probability=0.15, smoothing=0.7)
    loader = build_loader(train, micro_batch_size=8, rank=0, world_size=1, num_workers=2, seed=0, masker=masker)

See loader.py for the epoch layout and the resume guarantee, shards.py for the folder format checks.
"""

from dstrain.data.loader import EvalLoader, ShardLoader, build_eval_loader, build_loader, pad_batch
from dstrain.data.masking import IGNORE_INDEX, MLMMasker
from dstrain.data.shards import FORMAT, SAMPLE_MEMBER, ShardError, ShardSet

__all__ = ["ShardSet", "ShardError", "MLMMasker", "build_loader", "build_eval_loader", "ShardLoader", "EvalLoader",
           "pad_batch", "IGNORE_INDEX", "FORMAT", "SAMPLE_MEMBER"]
