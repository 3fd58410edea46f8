"""Small helpers for the data tests: build shards in-process with the real data_prep code, read them back."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np


def build(out: Path, tokenizer: Path, inputs: str, **kw) -> dict:
    from data_prep.build_shards import build_shards

    kw.setdefault("max_seq_len", 64)
    kw.setdefault("samples_per_shard", 50)
    kw.setdefault("val_fraction", 0.1)
    kw.setdefault("progress", False)
    return build_shards(inputs=inputs, tokenizer=str(tokenizer), out_dir=str(out), **kw)


def manifest(d: Path) -> dict:
    return json.loads((Path(d) / "manifest.json").read_text())


def read_tar(path: Path) -> list[tuple[str, np.ndarray]]:
    """(key, input_ids) with the standard library's tarfile only (no webdataset)."""
    out = []
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            key, _, member = m.name.partition(".")
            assert member == "input_ids.npy", m.name
            out.append((key, np.load(io.BytesIO(tf.extractfile(m).read()))))
    return out


def all_sequences(d: Path, split: str) -> list[tuple[int, ...]]:
    m = manifest(d)
    return [tuple(int(x) for x in ids) for e in m["splits"][split]["shards"] for _, ids in read_tar(Path(d) / e["name"])]


def write_tar(path: Path, samples: list[tuple[str, np.ndarray]]) -> None:
    with tarfile.open(path, "w") as tf:
        for key, ids in samples:
            buf = io.BytesIO()
            np.save(buf, ids)
            data = buf.getvalue()
            info = tarfile.TarInfo(f"{key}.input_ids.npy")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def replace_sample(shards: Path, name: str, index: int, ids: np.ndarray) -> str:
    """Rewrite one sample of a shard and fix the manifest's checksum, as a buggy tokenizer run would."""
    path = shards / name
    samples = read_tar(path)
    key = samples[index][0]
    samples[index] = (key, ids)
    write_tar(path, samples)
    m = json.loads((shards / "manifest.json").read_text())
    for e in m["splits"]["train"]["shards"] + m["splits"]["val"]["shards"]:
        if e["name"] == name:
            e["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
            e["bytes"] = path.stat().st_size
    (shards / "manifest.json").write_text(json.dumps(m))
    return key
