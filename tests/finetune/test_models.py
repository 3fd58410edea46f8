"""finetune's model-facing pieces on the three families it promises (BERT, DistilBERT, RoBERTa), in process:
which inputs each model gets, padding, evaluation split over ranks, the losses, and the glue table."""

import json
import statistics

import pytest
import torch
from transformers import (AutoModelForQuestionAnswering, AutoModelForSequenceClassification, AutoTokenizer,
                          BertConfig, DistilBertConfig, RobertaConfig)

from dstrain.config import ConfigError, UserError
from dstrain.finetune import losses
from dstrain.finetune.run import (FinetuneConfig, _model_input_keys, collate, encode_pairs, evaluate_classification,
                                  median_metrics, subset)
from dstrain.finetune.tasks import get_task
from dstrain.runtime import Dist

from tests.finetune.conftest import _minilm_tokenizer_dir

SMALL = dict(hidden_size=16, num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)


def _family_config(family: str, vocab: int, num_labels: int):
    if family == "bert":
        return BertConfig(vocab_size=vocab, num_hidden_layers=1, num_labels=num_labels, **SMALL)
    if family == "distilbert":
        return DistilBertConfig(vocab_size=vocab, n_layers=1, dim=16, n_heads=2, hidden_dim=32,
                                max_position_embeddings=64, num_labels=num_labels)
    return RobertaConfig(vocab_size=vocab, num_hidden_layers=1, num_labels=num_labels, type_vocab_size=1,
                         pad_token_id=0, **SMALL)


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(str(_minilm_tokenizer_dir()))


@pytest.mark.parametrize("family", ["bert", "distilbert", "roberta"])
def test_pair_inputs_reach_each_model_family(tok, family):
    """BERT gets segment ids; DistilBERT (no segment embedding) and RoBERTa (one) must not, or they break."""
    conf = _family_config(family, len(tok), 3)
    model = AutoModelForSequenceClassification.from_config(conf).eval()
    keys = _model_input_keys(model)
    assert ("token_type_ids" in keys) == (family == "bert")
    task = get_task("mnli")
    ex = [{"text_a": "a man sleeps", "text_b": "a person rests", "label": 0, "idx": 0},
          {"text_a": "short", "text_b": "a much longer hypothesis here", "label": 2, "idx": 1}]
    feats = encode_pairs(tok, ex, 16)
    batch = collate(feats, tok.pad_token_id, keys)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, max(len(f["input_ids"]) for f in feats))
    assert batch["attention_mask"][0].sum() == len(feats[0]["input_ids"])  # padding is masked
    assert batch["label"].tolist() == [0, 2]
    out = model(**{k: v for k, v in batch.items() if k in keys})
    assert out.logits.shape == (2, task.num_labels)
    qa = AutoModelForQuestionAnswering.from_config(_family_config(family, len(tok), 2))
    out = qa(**{k: v for k, v in batch.items() if k in keys})
    assert out.start_logits.shape == batch["input_ids"].shape


def test_truncation_to_max_len(tok):
    ex = [{"text_a": "word " * 100, "text_b": "other " * 100, "label": 0, "idx": 0}]
    assert len(encode_pairs(tok, ex, 20)[0]["input_ids"]) == 20


def test_evaluation_split_over_ranks_matches_one_rank(tok):
    """Each rank scores idx % world == rank; together the shares are every example exactly once."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(_family_config("bert", len(tok), 2)).eval()
    task = get_task("sst2")
    ex = [{"text_a": f"sentence number {i} " + "good " * (i % 3), "text_b": None, "label": i % 2, "idx": i}
          for i in range(7)]
    feats = {"validation": encode_pairs(tok, ex, 16)}
    keys = _model_input_keys(model)
    whole = evaluate_classification(model, task, feats, keys, 0, 3, Dist(0, 0, 1, torch.device("cpu")))
    rows = whole["validation"][1]
    assert [r[0] for r in rows] == list(range(7))
    shares = []
    for rank in (0, 1):
        import dstrain.finetune.run as run_mod

        orig = run_mod._gather
        run_mod._gather = lambda obj, dist: [obj]  # one rank's share, no process group needed here
        try:
            part = evaluate_classification(model, task, feats, keys, 0, 3, Dist(rank, rank, 2, torch.device("cpu")))
        finally:
            run_mod._gather = orig
        shares.append(part["validation"][1])
    assert sorted(shares[0] + shares[1]) == rows
    assert [r[0] for r in shares[1]] == [1, 3, 5]


def test_losses():
    s = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    assert losses.soft_kl(s, s, 2.0).item() == pytest.approx(0.0, abs=1e-7)  # KL of identical logits is 0
    t = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
    T = 2.0
    p_t, p_s = torch.softmax(t / T, -1), torch.softmax(s / T, -1)
    expected = (p_t * (p_t.log() - p_s.log())).sum(-1).mean() * T * T
    assert losses.soft_kl(s, t, T).item() == pytest.approx(expected.item(), rel=1e-5)
    y = torch.tensor([0, 1])
    total, terms = losses.classification_distill_loss(s, y, t, "single", 0.5, 0.5, T)
    assert total.item() == pytest.approx(0.5 * terms["loss_ce"].item() + 0.5 * terms["loss_task"].item())
    assert terms["loss_task"].item() == pytest.approx(torch.nn.functional.cross_entropy(s, y).item())
    # span: a_ce * (KL_start + KL_end) / 2 * T^2 + a_task * (CE_start + CE_end) / 2
    st, en = torch.randn(2, 5), torch.randn(2, 5)
    ts, te = torch.randn(2, 5), torch.randn(2, 5)
    pos_s, pos_e = torch.tensor([1, 2]), torch.tensor([3, 2])
    total, terms = losses.span_distill_loss(st, en, pos_s, pos_e, ts, te, 0.3, 0.7, T)
    kl = (losses.soft_kl(st, ts, T) + losses.soft_kl(en, te, T)) / 2
    ce = (torch.nn.functional.cross_entropy(st, pos_s) + torch.nn.functional.cross_entropy(en, pos_e)) / 2
    assert total.item() == pytest.approx((0.3 * kl + 0.7 * ce).item(), rel=1e-5)
    reg, terms = losses.classification_distill_loss(torch.tensor([[1.0], [2.0]]), torch.tensor([1.0, 4.0]),
                                                    torch.tensor([[0.0], [2.0]]), "regression", 1.0, 1.0, T)
    assert terms["loss_ce"].item() == pytest.approx(0.5) and terms["loss_task"].item() == pytest.approx(2.0)


def test_subset_is_evenly_spaced_and_median_over_seeds():
    assert subset(list(range(10)), 3) == [0, 3, 6]
    assert subset([1, 2], 0) == [1, 2] and subset([1, 2], 5) == [1, 2]
    runs = [{"accuracy": a, "seed": s, "train_steps": 10, "splits": {"validation": {"accuracy": a}}}
            for s, a in ((1, 0.5), (2, 0.9), (3, 0.7))]
    med = median_metrics(runs)
    assert med["accuracy"] == 0.7 == med["splits"]["validation"]["accuracy"] and "seed" not in med


def test_config_errors_name_the_setting():
    from dstrain.config import build_config

    with pytest.raises(ConfigError, match="--num_seeds: must be >= 1"):
        build_config(FinetuneConfig, {"model": "m", "task": "sst2", "out_dir": "o", "num_seeds": 0})
    with pytest.raises(ConfigError, match=r"--num_seed \(did you mean --num_seeds\?\)"):
        build_config(FinetuneConfig, {"model": "m", "task": "sst2", "out_dir": "o", "num_seed": 3})
    with pytest.raises(UserError, match="Did you mean `qnli`"):
        build_config(FinetuneConfig, {"model": "m", "task": "qnl", "out_dir": "o"})
    cfg = build_config(FinetuneConfig, {"model": "m", "task": "squad", "out_dir": "o"})
    assert (cfg.lr, cfg.epochs, cfg.seq_len(), cfg.doc_stride) == (5e-5, 3.0, 384, 128)  # paper defaults
    assert build_config(FinetuneConfig, {"model": "m", "task": "rte", "out_dir": "o"}).seq_len() == 128


# ----------------------------------------------------------------------------------------- glue_table


def _write_run(d, task, model, params, **metrics):
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"task": task, "model": model, "num_parameters": params, **metrics}))
    return str(d)


def test_glue_table_layout_macro_and_ratio(tmp_path, capsys):
    from dstrain.finetune.table import glue_table

    t, s = "/m/bert-base", "/m/student"
    runs = [
        _write_run(tmp_path / "t-cola", "cola", t, 110e6, matthews_correlation=0.6),
        _write_run(tmp_path / "t-stsb", "stsb", t, 110e6, pearson=0.9, spearmanr=0.8),
        _write_run(tmp_path / "t-mrpc", "mrpc", t, 110e6, f1=0.9, accuracy=0.8),
        _write_run(tmp_path / "t-mnli", "mnli", t, 110e6, accuracy=0.8, accuracy_mm=0.82),
        _write_run(tmp_path / "s-cola", "cola", s, 66e6, matthews_correlation=0.5),
        _write_run(tmp_path / "s-stsb", "stsb", s, 66e6, pearson=0.8, spearmanr=0.8),
        _write_run(tmp_path / "s-mrpc", "mrpc", s, 66e6, f1=0.8, accuracy=0.8),
        _write_run(tmp_path / "s-squad", "squad", s, 66e6, exact_match=70.0, f1=80.0),
    ]
    glue_table(*runs, out=str(tmp_path / "table.md"))
    text = capsys.readouterr().out
    lines = text.strip().splitlines()
    assert lines[0] == ("| model | macro | CoLA | MNLI | MRPC | STS-B | MNLI-mm | SQuAD EM | SQuAD F1 | params | "
                        "macro / bert-base |")
    teacher_macro = statistics.mean([60, 80, 85, 85])  # cola, mnli, mrpc mean(f1, acc), stsb mean(p, s)
    student_macro = statistics.mean([50, 80, 80])
    ratio = 100 * student_macro / statistics.mean([60, 85, 85])  # over the tasks both rows have
    assert lines[2] == (f"| bert-base | {teacher_macro:.1f} | 60.0 | 80.0 | 85.0 | 85.0 | 82.0 | - | - | 110.0M "
                        f"| 100.0% |")
    assert lines[3] == (f"| student | {student_macro:.1f} | 50.0 | - | 80.0 | 80.0 | - | 70.0 | 80.0 | 66.0M "
                        f"| {ratio:.1f}% |")
    assert (tmp_path / "table.md").read_text() == text
    glue_table(*runs, teacher=s, names=[f"{s}=distil"])
    assert "macro / distil" in capsys.readouterr().out


def test_glue_table_bad_input(tmp_path):
    from dstrain.finetune.table import glue_table

    with pytest.raises(UserError, match="no metrics.json"):
        glue_table(str(tmp_path))
    a = _write_run(tmp_path / "a", "rte", "/m/x", 1, accuracy=0.5)
    b = _write_run(tmp_path / "b", "rte", "/m/x", 1, accuracy=0.6)
    with pytest.raises(UserError, match="two rte runs of model /m/x"):
        glue_table(a, b)
    with pytest.raises(UserError, match="--teacher nobody: not one of the rows"):
        glue_table(a, teacher="nobody")
    with pytest.raises(UserError, match="no run folders given"):
        glue_table()
