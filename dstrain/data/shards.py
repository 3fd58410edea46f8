"""A folder of tokenized WebDataset shards (made by data_prep/build_shards.py), opened and checked.

    shards = ShardSet.open("shards/", split="train")          # strict: any bad shard is an error
    shards = ShardSet.open("shards/", strict=False, max_bad_fraction=0.05)   # skip and count bad shards

Format: dstrain/shard_format.py (DIR/manifest.json written last with "complete": true, DIR/train-%06d.tar
and DIR/val-%06d.tar whose samples hold one member `input_ids.npy`, DIR/token_counts.npy, DIR/tokenizer/).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from dstrain.config import UserError
from dstrain.hf_io import vocab_fingerprint
from dstrain.shard_format import FORMAT, SAMPLE_MEMBER, sha256_bytes, sha256_file

log = logging.getLogger("dstrain.data")

# Hash every shard up front when the split is at most this big; bigger splits are hashed as they stream.
VERIFY_AUTO_MAX_BYTES = 2 << 30
TOKENIZER_KEYS = ("name_or_path", "vocab_size", "pad_token_id", "cls_token_id", "sep_token_id",
                  "mask_token_id", "unk_token_id", "all_special_ids")


class ShardError(UserError):
    """A shard (or one of its samples) is unusable. `shard` names the file."""

    def __init__(self, shard: str, message: str):
        super().__init__(message)
        self.shard = shard


@dataclasses.dataclass
class ShardSet:
    """One split of a shard folder. `.shards` / `.shard_entries` list only the usable shards."""

    root: Path
    split: str
    manifest: dict[str, Any]
    shard_entries: list[dict[str, Any]]
    strict: bool = True
    max_bad_fraction: float = 0.0
    bad_shards: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> why it was skipped

    @classmethod
    def open(cls, data_dir: str | Path, split: str = "train", strict: bool = True,
             max_bad_fraction: float = 0.05, verify: str | bool = "auto") -> "ShardSet":
        """Read and check DIR/manifest.json and the shard files of `split`.

        verify: True hashes every shard now (sha256 vs the manifest), False only checks presence and
        size, "auto" hashes when the split is <= 2 GiB. The loader hashes each shard again as it reads
        it, so a big split is still checked, just later. strict=False skips bad shards (counted in
        `.bad_shards`) unless more than `max_bad_fraction` of the split is bad.
        """
        root = Path(data_dir)
        mpath = root / "manifest.json"
        if not root.is_dir():
            raise UserError(f"data folder {root}: no such folder. Build shards with "
                            f"`python data_prep/build_shards.py --out_dir {root} ...`")
        if not mpath.is_file():
            raise UserError(f"data folder {root}: no manifest.json, so it is not a finished shard folder "
                            f"(an interrupted build leaves none). Rebuild it with `python data_prep/build_shards.py "
                            f"--out_dir {root} ...`")
        try:
            manifest = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{mpath}: not valid JSON ({e}); rebuild the folder with data_prep/build_shards.py") from None
        _check_manifest(manifest, mpath)
        _check_tokenizer(root, manifest["tokenizer"])
        if split not in manifest["splits"]:
            raise UserError(f"{mpath}: no split {split!r} (has {', '.join(sorted(manifest['splits']))})")
        entries = list(manifest["splits"][split]["shards"])
        if not entries:
            raise UserError(f"{mpath}: split {split!r} has no shards; rebuild with a larger corpus or "
                            f"--val_fraction > 0 for a val split")
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise UserError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        total_bytes = sum(int(e.get("bytes", 0)) for e in entries)
        do_hash = verify is True or (verify == "auto" and total_bytes <= VERIFY_AUTO_MAX_BYTES)
        good, bad = [], {}
        for e in entries:
            why = _check_shard_file(root / e["name"], e, do_hash)
            if why is None:
                good.append(e)
            elif strict:
                raise ShardError(e["name"], f"shard {root / e['name']}: {why}. {REBUILD_HINT}")
            else:
                bad[e["name"]] = why
                log.warning("skipping bad shard %s: %s", root / e["name"], why)
        if bad and len(bad) > max_bad_fraction * len(entries):
            raise UserError(
                f"data folder {root} split {split!r}: {len(bad)} of {len(entries)} shards are bad, more than "
                f"max_bad_fraction {max_bad_fraction}: {_list_bad(bad)}. {REBUILD_HINT}")
        if not good:
            raise UserError(f"data folder {root} split {split!r}: no usable shard. {REBUILD_HINT}")
        return cls(root=root, split=split, manifest=manifest, shard_entries=good, strict=strict,
                   max_bad_fraction=max_bad_fraction, bad_shards=bad)

    @property
    def tokenizer_info(self) -> dict[str, Any]:
        return dict(self.manifest["tokenizer"])

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["vocab_size"])

    @property
    def max_seq_len(self) -> int:
        return int(self.manifest["max_seq_len"])

    @property
    def num_samples(self) -> int:
        """Samples in the usable shards of this split."""
        return sum(int(e["num_samples"]) for e in self.shard_entries)

    @property
    def num_tokens(self) -> int:
        return sum(int(e["num_tokens"]) for e in self.shard_entries)

    @property
    def num_shards_total(self) -> int:
        return len(self.manifest["splits"][self.split]["shards"])

    @property
    def shards(self) -> list[Path]:
        return [self.root / e["name"] for e in self.shard_entries]

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    def token_counts(self) -> np.ndarray | None:
        """(vocab_size,) int64 token frequencies over the train split, or None when the folder has none."""
        p = self.root / "token_counts.npy"
        if not p.is_file():
            return None
        counts = np.load(p)
        if counts.shape != (self.vocab_size,):
            raise UserError(f"{p}: shape {counts.shape}, expected ({self.vocab_size},); rebuild the folder")
        return counts.astype(np.int64)

    def read_shard(self, entry: dict[str, Any], on_bad_sample=None) -> Iterator[tuple[str, np.ndarray]]:
        """(key, input_ids) of every sample of one shard, after checking its sha256 and every sample.

        Raises ShardError naming the shard (and the sample key for a bad sample); with `on_bad_sample`
        a bad sample is passed to it as a ShardError and skipped instead.
        """
        return read_shard(self.root / entry["name"], entry, self.vocab_size, self.max_seq_len, on_bad_sample)


REBUILD_HINT = ("Rebuild the folder with data_prep/build_shards.py, or skip bad shards and samples with "
                "strict=False (distill/pretrain: --strict_data false)")


def _list_bad(bad: dict[str, str], n: int = 5) -> str:
    items = [f"{k} ({v})" for k, v in list(bad.items())[:n]]
    return "; ".join(items) + (f"; and {len(bad) - n} more" if len(bad) > n else "")


def _check_manifest(m: Any, mpath: Path) -> None:
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise UserError(f"{mpath}: not a dstrain shard manifest (format {m.get('format') if isinstance(m, dict) else None!r}, "
                        f"expected {FORMAT!r}); rebuild with data_prep/build_shards.py")
    if m.get("complete") is not True:
        raise UserError(f"{mpath}: the build that wrote this folder did not finish (complete is not true); "
                        f"rerun data_prep/build_shards.py with the same --out_dir")
    missing = [k for k in ("tokenizer", "max_seq_len", "splits", "dtype") if k not in m]
    missing += [f"tokenizer.{k}" for k in TOKENIZER_KEYS if k not in m.get("tokenizer", {})]
    if missing:
        raise UserError(f"{mpath}: missing key(s) {', '.join(missing)}; rebuild with data_prep/build_shards.py")


def _check_tokenizer(root: Path, info: dict[str, Any]) -> None:
    """DIR/tokenizer must be the tokenizer the shards were built with: same vocabulary fingerprint (manifests
    before the fingerprint: same size). A replaced tokenizer/ would train on ids that mean other words."""
    path = root / "tokenizer" / "tokenizer.json"
    rebuild = (f"Put back the tokenizer the shards were built with ({info.get('name_or_path')}), or rebuild them "
               f"with data_prep/build_shards.py --tokenizer YOUR_TOKENIZER")
    if not path.is_file():
        raise UserError(f"data folder {root}: no tokenizer/tokenizer.json, so its token ids cannot be read. {rebuild}")
    try:
        from tokenizers import Tokenizer

        vocab = Tokenizer.from_file(str(path)).get_vocab(with_added_tokens=True)
    except Exception as e:
        raise UserError(f"{path}: cannot load it ({type(e).__name__}: {e}). {rebuild}") from None
    want = info.get("vocab_fingerprint")
    if want is not None and vocab_fingerprint(vocab) != want:
        raise UserError(f"data folder {root}: tokenizer/ is not the tokenizer the shards were built with (vocabulary "
                        f"fingerprint {vocab_fingerprint(vocab)}, {len(vocab)} tokens; manifest.json: {want}, "
                        f"{info['vocab_size']} tokens): it was replaced. {rebuild}")
    if want is None and len(vocab) != int(info["vocab_size"]):
        raise UserError(f"data folder {root}: tokenizer/ has {len(vocab)} tokens but manifest.json says the shards "
                        f"were built with {info['vocab_size']}: it was replaced. {rebuild}")


def _check_shard_file(path: Path, entry: dict[str, Any], do_hash: bool) -> str | None:
    """Why the shard file is unusable, or None."""
    if not path.is_file():
        return "file is missing"
    size = path.stat().st_size
    if size == 0:
        return "file is empty (0 bytes)"
    if "bytes" in entry and size != int(entry["bytes"]):
        return f"file has {size} bytes but the manifest says {entry['bytes']} (truncated or overwritten)"
    if int(entry.get("num_samples", 0)) <= 0:
        return "manifest lists it with no samples"
    if do_hash:
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            return f"sha256 {digest[:12]}... does not match the manifest's {entry['sha256'][:12]}... (corrupted)"
    return None


def read_shard(path: Path, entry: dict[str, Any], vocab_size: int, max_seq_len: int,
               on_bad_sample=None) -> Iterator[tuple[str, np.ndarray]]:
    """Stream a shard's samples with webdataset's tar reader after checking the whole file's sha256.

    The file is read into memory first (a shard is a few MB), so a corrupt shard is rejected before any
    of its samples reach a batch.
    """
    from webdataset.tariterators import group_by_keys, tar_file_expander

    name = path.name
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ShardError(name, f"shard {path}: cannot read ({e})") from None
    if not data:
        raise ShardError(name, f"shard {path}: file is empty (0 bytes)")
    if sha256_bytes(data) != entry["sha256"]:
        raise ShardError(name, f"shard {path}: sha256 does not match the manifest (truncated or corrupted, "
                               f"{len(data)} bytes)")
    n = 0
    try:
        files = tar_file_expander([{"url": str(path), "stream": io.BytesIO(data)}])
        for sample in group_by_keys(files):
            key = sample["__key__"]
            if SAMPLE_MEMBER not in sample:
                raise ShardError(name, f"shard {path} sample {key}: no {SAMPLE_MEMBER} member "
                                       f"(has {', '.join(k for k in sample if not k.startswith('__'))})")
            ids = np.load(io.BytesIO(sample[SAMPLE_MEMBER]), allow_pickle=False)
            n += 1
            try:
                _check_sample(ids, path, key, vocab_size, max_seq_len)
            except ShardError as err:
                if on_bad_sample is None:
                    raise
                on_bad_sample(err)
                continue
            yield key, ids
    except ShardError:
        raise
    except Exception as e:  # tarfile.ReadError, ValueError from np.load, ...
        raise ShardError(name, f"shard {path}: unreadable after {n} samples ({type(e).__name__}: {e})") from None
    if n == 0:
        raise ShardError(name, f"shard {path}: holds no samples")


def _check_sample(ids: np.ndarray, path: Path, key: str, vocab_size: int, max_seq_len: int) -> None:
    """Reject what would otherwise become a device-side assert in the embedding lookup."""
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ShardError(path.name, f"shard {path} sample {key}: input_ids must be a 1-D integer array, got "
                                    f"shape {ids.shape} dtype {ids.dtype}")
    if ids.size == 0:
        raise ShardError(path.name, f"shard {path} sample {key}: empty sequence (0 tokens)")
    if ids.size > max_seq_len:
        raise ShardError(path.name, f"shard {path} sample {key}: {ids.size} tokens, more than max_seq_len "
                                    f"{max_seq_len} in the manifest")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ShardError(path.name, f"shard {path} sample {key}: token id {bad} is outside the vocabulary "
                                    f"(size {vocab_size}); the shards were built with a different tokenizer "
                                    f"than the manifest says. Rebuild them")
