"""The shard folder format: the contract between data_prep/build_shards.py (writer) and dstrain/data (reader).

Torch-free on purpose (only hashlib): data_prep imports it without paying for torch, which importing the
dstrain.data package would.

    DIR/manifest.json           written last, atomically; {"format": FORMAT, "complete": true, ...}
    DIR/train-%06d.tar, val-*   WebDataset tars; sample key = zero-padded index in the split, one member
                                SAMPLE_MEMBER: a 1-D .npy of token ids (uint16 or int32), [CLS] ... [SEP]
    DIR/token_counts.npy        int64 count of every vocabulary id over the train split (mlm_smoothing)
    DIR/tokenizer/              the tokenizer used (save_pretrained)

The manifest's keys are listed in docs/DATA.md.
"""

from __future__ import annotations

import hashlib
import os

FORMAT = "dstrain-shards-v1"  # manifest["format"]; change it when readers of the old layout would misread
SAMPLE_MEMBER = "input_ids.npy"  # the one member of every sample: the tar holds KEY.input_ids.npy


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks (shards can be larger than RAM allows to hold twice)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
