"""End to end: real `python dstrain/cli.py finetune` / `deepspeed dstrain/cli.py finetune` subprocesses on tiny
learnable tasks, one per input kind (single sentence, pair, regression, span), that must beat chance; the
files a run leaves; the second distillation step; the genre task; and bad input on the command line."""

import json
import statistics
from pathlib import Path

import pytest

from dstrain.finetune import squad as S
from tests.launch import run_cli

FAST = ["--lr", "2e-3", "--global_batch_size", "16", "--max_seq_length", "64", "--log_every", "5"]


def finetune(model, task, data_dir, out, *extra, ranks=1):
    args = ["finetune", "--model", str(model), "--task", task, "--out_dir", str(out), *FAST, *extra]
    if data_dir:
        args += ["--data_dir", str(data_dir)]
    return run_cli(*args, ranks=ranks, timeout=300)


def scalars(run_dir: Path) -> dict[str, list[float]]:
    """Every scalar tag in RUN/tb, read back with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def sst2_run(tiny_bert_dir, sst2_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "sst2"
    proc = finetune(tiny_bert_dir, "sst2", sst2_dir, out, "--epochs", "4")
    return out, proc


def test_single_sentence_beats_chance_and_writes_a_complete_run(sst2_run):
    out, proc = sst2_run
    m = json.loads((out / "metrics.json").read_text())
    assert m["task"] == "sst2" and m["accuracy"] >= 0.85, m  # chance is 0.5
    assert m["splits"]["validation"]["accuracy"] == m["accuracy"]
    assert '"accuracy"' in proc.stdout and "metrics.json" in proc.stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["lr"] == 2e-3 and cfg["global_batch_size"] == 16 and cfg["ds_config_resolved"]["train_batch_size"] == 16
    preds = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 100 and {p["split"] for p in preds} == {"validation"}
    assert sum(p["prediction"] == p["label"] for p in preds) / 100 == pytest.approx(m["accuracy"])
    assert preds[0]["label_name"] in ("negative", "positive")
    tb = scalars(out)
    assert len(tb["train/loss"]) >= 4 and tb["train/loss"][-1] < tb["train/loss"][0]
    assert tb["eval/validation/accuracy"][-1] == pytest.approx(m["accuracy"])
    assert "train/lr" in tb
    # the fine-tuned model is a normal HF folder with the task's labels and the tokenizer
    from transformers import AutoConfig, AutoTokenizer

    conf = AutoConfig.from_pretrained(str(out / "model"))
    assert conf.id2label == {0: "negative", 1: "positive"}
    assert AutoTokenizer.from_pretrained(str(out / "model")).vocab_size == 30522
    assert not list(out.glob("*.tmp-*"))


def test_pair_task_from_jsonl_with_two_seeds_reports_the_median(tiny_bert_dir, rte_dir, tmp_path):
    out = tmp_path / "rte"
    finetune(tiny_bert_dir, "rte", rte_dir, out, "--epochs", "4", "--num_seeds", "2", "--seed", "7")
    m = json.loads((out / "metrics.json").read_text())
    seeds = [json.loads((out / f"seed-{s}" / "metrics.json").read_text()) for s in (7, 8)]
    assert [s["seed"] for s in seeds] == [7, 8] and m["seeds"] == [7, 8]
    assert m["accuracy"] == pytest.approx(statistics.median(s["accuracy"] for s in seeds))
    assert m["per_seed"] == {"7": {"accuracy": seeds[0]["accuracy"]}, "8": {"accuracy": seeds[1]["accuracy"]}}
    assert m["accuracy"] >= 0.75, m  # chance is 0.5
    assert (out / "seed-8" / "model" / "config.json").is_file()


def test_regression_stsb_from_distributed_tsv(tiny_bert_dir, stsb_dir, tmp_path):
    out = tmp_path / "stsb"
    finetune(tiny_bert_dir, "stsb", stsb_dir, out, "--epochs", "4")
    m = json.loads((out / "metrics.json").read_text())
    assert m["pearson"] >= 0.6 and m["spearmanr"] >= 0.5, m  # chance is 0
    preds = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
    assert isinstance(preds[0]["prediction"], float) and "label_name" not in preds[0]


@pytest.fixture(scope="module")
def squad_run(tiny_bert_dir, squad_dir, tmp_path_factory):
    """SQuAD through the real deepspeed launcher with 2 CPU ranks; short windows so contexts span several."""
    out = tmp_path_factory.mktemp("runs") / "squad"
    finetune(tiny_bert_dir, "squad", squad_dir, out, "--epochs", "3", "--max_seq_length", "32", "--doc_stride", "8",
             "--max_train_examples", "150", "--max_eval_examples", "33", ranks=2)
    return out


def test_span_task_two_ranks_gathers_every_prediction(squad_run, squad_dir):
    m = json.loads((squad_run / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["exact_match"] >= 60 and m["f1"] >= m["exact_match"], m  # chance ~ 5%
    preds = json.loads((squad_run / "predictions.json").read_text())
    dev = S.load_squad_json(squad_dir / "dev-v1.1.json")
    from dstrain.finetune.run import subset

    dev = subset(dev, 33)
    assert set(preds) == {e["id"] for e in dev}  # an odd count: both ranks' shares gathered, none twice
    assert S.evaluate(dev, preds) == pytest.approx({"exact_match": m["exact_match"], "f1": m["f1"]})
    nbest = json.loads((squad_run / "nbest_predictions.json").read_text())
    assert all(nbest[i][0]["text"] == preds[i] for i in preds)


def test_second_distillation_step_with_a_finetuned_teacher(tiny_bert_dir, squad_dir, squad_run, tmp_path):
    out = tmp_path / "squad-distilled"
    finetune(tiny_bert_dir, "squad", squad_dir, out, "--epochs", "2", "--max_seq_length", "32", "--doc_stride", "8",
             "--max_train_examples", "100", "--max_eval_examples", "20", "--teacher", str(squad_run / "model"),
             "--alpha_ce", "0.5", "--alpha_task", "0.5", "--temperature", "2")
    m = json.loads((out / "metrics.json").read_text())
    assert m["teacher"] == str(squad_run / "model") and m["exact_match"] >= 50, m
    tb = scalars(out)
    assert {"train/loss", "train/loss_ce", "train/loss_task"} <= set(tb)
    # total = 0.5 * ce + 0.5 * task at every logged step
    for total, ce, task in zip(tb["train/loss"], tb["train/loss_ce"], tb["train/loss_task"]):
        assert total == pytest.approx(0.5 * ce + 0.5 * task, rel=1e-4)


def test_shakespeare_genre_runs_offline_with_genre_labels(tiny_bert_dir, tmp_path):
    out = tmp_path / "genre"
    finetune(tiny_bert_dir, "shakespeare_genre", None, out, "--max_steps", "6", "--max_train_examples", "192",
             "--max_eval_examples", "60")
    m = json.loads((out / "metrics.json").read_text())
    assert 0 <= m["accuracy"] <= 1 and m["train_steps"] == 6
    preds = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 60 and {p["label_name"] for p in preds} == {"comedies", "histories", "problems", "roman",
                                                                     "romances", "tragedies"}


def test_bad_input_on_the_command_line_fails_before_any_output(tiny_bert_dir, sst2_dir, sst2_run, tmp_path):
    """One real command line (exit 2, one line, no traceback); the other bad inputs go through `finetune()`
    in-process, which raises the same UserError before any process group or output."""
    from dstrain.config import UserError
    from dstrain.finetune.run import finetune

    proc = run_cli("finetune", "--model", str(tiny_bert_dir), "--task", "sts-b", "--out_dir", str(tmp_path / "a"),
                   check=False)
    assert proc.returncode == 2 and "Did you mean `stsb`?" in proc.stderr and "Traceback" not in proc.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.tsv").write_text((sst2_dir / "train.tsv").read_text())
    (bad / "dev.tsv").write_text("sentence\tlabel\nfine\t1\nodd\tpositive-ish\n")
    with pytest.raises(UserError) as e:
        finetune(model=str(tiny_bert_dir), task="sst2", data_dir=str(bad), out_dir=str(tmp_path / "b"))
    assert f"{bad / 'dev.tsv'} line 3: label 'positive-ish'" in str(e.value)
    assert not (tmp_path / "b").exists()
    out, _ = sst2_run
    with pytest.raises(UserError, match="already holds a finished run"):
        finetune(model=str(tiny_bert_dir), task="sst2", data_dir=str(sst2_dir), out_dir=str(out))
    before = (out / "metrics.json").read_text()
    with pytest.raises(UserError) as e:
        finetune(model=str(tiny_bert_dir), task="sst2", data_dir=str(sst2_dir), out_dir=str(out), overwrite=True,
                 max_seq_length=256)
    assert "--max_seq_length 256: the model" in str(e.value) and "128 positions" in str(e.value)
    assert (out / "metrics.json").read_text() == before  # a refused rerun leaves the old results alone
