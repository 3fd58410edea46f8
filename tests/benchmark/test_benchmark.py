"""`benchmark` end to end through the real CLI, with tiny models: figures present and sane, files written,
a model with twice the layers measured slower, bad input refused before anything is written."""

import json

import numpy as np
import pytest
import torch

from dstrain.benchmark import inputs as I
from dstrain.benchmark.measure import paired_ratio, peak_memory, percentiles, time_interleaved
from dstrain.benchmark.models import BUILTINS, build, disk_bytes, param_counts, resolve_spec
from dstrain.benchmark.run import BenchmarkConfig, run
from dstrain.config import ConfigError, UserError, build_config
from tests.launch import run_cli

WORDS = ("a man woman child dog cat is are the on in at of to and playing riding eating reading "
         "guitar horse park street news stocks fell rain water plane train car how what why do i my").split()


def _bert(layers, hidden=128, vocab=1000, pos=512):
    return {"model_type": "bert", "vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": layers,
            "num_attention_heads": 2, "intermediate_size": 4 * hidden, "max_position_embeddings": pos}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two config JSONs of the same width (4 and 2 layers) and an HF folder with weights and a tokenizer."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    d = tmp_path_factory.mktemp("bench_models")
    (d / "deep.json").write_text(json.dumps(_bert(4)))
    (d / "shallow.json").write_text(json.dumps(_bert(2)))
    folder = d / "tiny_hf"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + list("abcdefghijklmnopqrstuvwxyz.,?'")
    vocab += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(d / "vocab.txt"))
    torch.manual_seed(0)
    BertModel(BertConfig(**{k: v for k, v in _bert(2, hidden=32, vocab=len(vocab), pos=128).items()
                            if k != "model_type"})).save_pretrained(folder)
    tok.save_pretrained(folder)
    return d


def _check_timings(row):
    assert row["n"] > 0
    assert 0 < row["min_ms"] <= row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
    assert row.get("tokens_per_s", 1) > 0
    assert row["speedup_vs_ref"] > 0


def test_grid_every_figure_sane_and_twice_the_layers_slower(tiny, tmp_path):
    out = tmp_path / "bench"
    proc = run_cli("benchmark", "--models", f"{tiny / 'deep.json'},{tiny / 'shallow.json'}", "--seq_lens", "32,256",
                   "--batch_sizes", "1,2", "--precisions", "fp32,bf16,int8", "--warmup", "1", "--repeats", "6",
                   "--out_dir", str(out), timeout=300)
    assert "speedup" in proc.stdout and "deep" in proc.stdout and "shallow" in proc.stdout
    res = json.loads((out / "benchmark.json").read_text())
    assert (out / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*.tmp-*"))
    m = res["machine"]
    assert m["cpu_model"] and m["cpu_count"] >= 1 and m["torch"] == torch.__version__ and m["device"] == "cpu"
    deep, shallow = res["models"]
    assert (deep["num_layers"], shallow["num_layers"]) == (4, 2)
    # each BERT layer of width 128: 4*(128*128+128) + 2*128*512 + 512 + 128 + 2*2*128 weights/biases/norms
    layer = 4 * (128 * 128 + 128) + (128 * 512 + 512) + (512 * 128 + 128) + 2 * 2 * 128
    assert deep["params_total"] - shallow["params_total"] == 2 * layer
    assert deep["params_non_embedding"] < deep["params_total"]
    for info in res["models"]:
        assert info["disk_bytes"] > 4 * info["params_total"]  # fp32 safetensors: 4 bytes each + header
        assert info["disk_bytes"] < 4 * info["params_total"] + 64 * 1024
        assert 0 < info["int8_bytes"] < info["disk_bytes"]
    rows = res["inference"]
    assert len(rows) == 3 * 2 * 2 * 2  # precisions x seq_lens x batch_sizes x models
    for r in rows:
        _check_timings(r)
        assert r["peak_mem_delta_bytes"] is not None and r["peak_mem_delta_bytes"] >= 0
    for r in rows:
        if r["model"] == "deep":
            assert r["speedup_vs_ref"] == pytest.approx(1.0)
        if r["model"] == "deep" and r["precision"] == "fp32":
            assert r["speedup_vs_ref_fp32"] == pytest.approx(1.0)
        assert r["speedup_vs_ref_fp32"] > 0  # every precision also against the fp32 reference
    assert [(r["precision"], r["seq_len"], r["batch_size"], r["model"]) for r in rows][:4] == [
        ("fp32", 32, 1, "deep"), ("fp32", 32, 1, "shallow"), ("fp32", 32, 2, "deep"), ("fp32", 32, 2, "shallow")]
    # twice the layers, same width, same inputs, timed alternately: deep must be slower in fp32. Only the
    # order, from the paired ratio (drift on the shared cores hits both alike), not a margin
    for seq in (32, 256):
        s = next(r for r in rows if r["model"] == "shallow" and r["precision"] == "fp32" and r["seq_len"] == seq
                 and r["batch_size"] == 2)
        assert s["speedup_vs_ref"] > 1, s["speedup_vs_ref"]
    # the activations of seq 256 x batch 2: at least one (2, 256, 128) fp32 tensor
    big = next(r for r in rows if r["model"] == "deep" and r["precision"] == "fp32" and r["seq_len"] == 256
               and r["batch_size"] == 2)
    assert big["peak_mem_delta_bytes"] > 256 * 2 * 128 * 4


def test_paper_preset_on_hf_folder_with_tokenizer(tiny, tmp_path):
    out = tmp_path / "paper"
    folder = tiny / "tiny_hf"
    proc = run_cli("benchmark", "--models", f"{folder},{tiny / 'shallow.json'}", "--preset", "paper",
                   "--num_pairs", "30", "--repeats", "2", "--out_dir", str(out), timeout=300)
    assert "STS-B-like pass" in proc.stdout and "real tokenizer" in proc.stdout
    res = json.loads((out / "benchmark.json").read_text())
    assert res["device"] == "cpu" and res["precisions"] == ["fp32"] and res["tokenizer"] == str(folder)
    assert res["models"][0]["kind"] == "folder"
    assert res["models"][0]["disk_bytes"] == (folder / "model.safetensors").stat().st_size
    assert not res["inference"]
    assert [r["model"] for r in res["sts_pass"]] == ["tiny_hf", "shallow"]
    for r in res["sts_pass"]:
        _check_timings(r)
        assert r["pairs"] == 30 and r["tokenized"] and r["passes"] == 2
        assert 8 < r["mean_tokens"] < 128 and r["pass_s"] > 0 and len(r["pass_s_all"]) == 2
    assert (out / "benchmark.png").stat().st_size > 1000


def test_train_mode_tokens_per_s_and_flops(tmp_path):
    t, s = tmp_path / "t.json", tmp_path / "s.json"
    t.write_text(json.dumps(_bert(2, hidden=32)))
    s.write_text(json.dumps(_bert(1, hidden=32)))
    out = tmp_path / "train"
    # eager only: inductor's C++ build of the compiled side takes minutes on 2 shared cores
    # (test_train_table_puts_compiled_beside_eager covers the side-by-side report)
    run_cli("benchmark", "--mode", "train", "--models", f"{t},{s}", "--seq_lens", "32", "--batch_sizes", "4",
            "--steps", "2", "--warmup", "1", "--peak_tflops", "1.0", "--compile", "eager", "--out_dir", str(out),
            timeout=300)
    res = json.loads((out / "benchmark.json").read_text())
    (row,) = res["train"]
    assert row["compiled"] is False
    assert row["teacher"] == "t" and row["student"] == "s" and row["precision"] == "fp32"
    from dstrain.flops import EncoderShape, distill_step_flops

    shape = lambda L: EncoderShape(L, 32, 128, 1000)  # noqa: E731
    assert row["flops_per_step"] == distill_step_flops(shape(2), shape(1), 4, 32, 4 * 32, 4 * 32)
    assert row["step_s"] > 0 and row["tokens_per_s"] == pytest.approx(4 * 32 / row["step_s"])
    assert row["mfu"] == pytest.approx(row["flops_per_step"] / row["step_s"] / 1e12)
    assert (out / "benchmark.png").exists()


def test_train_table_puts_compiled_beside_eager():
    from dstrain.benchmark.train import format_train

    base = {"teacher": "t", "student": "s", "precision": "fp32", "seq_len": 32, "micro_batch_size": 4,
            "achieved_tflops": 0.1, "mfu": None}
    rows = [dict(base, compiled=False, step_s=0.2, tokens_per_s=640.0),
            dict(base, compiled=True, step_s=0.1, tokens_per_s=1280.0)]
    text = format_train({"machine": {"device": "cpu", "gpu_name": None, "cpu_model": "x", "torch_threads": 2},
                         "train": rows})
    eager, compiled = [ln for ln in text.splitlines() if ln.startswith("t ")]
    assert "eager" in eager and "compiled" in compiled and "2.00x" in compiled


def test_bad_input_is_refused_with_a_clear_error(tiny, tmp_path):
    out = tmp_path / "never"
    proc = run_cli("benchmark", "--models", "bert-bse,distilbert", "--out_dir", str(out), check=False)
    assert proc.returncode == 2
    assert "--models bert-bse" in proc.stderr and "Did you mean bert-base?" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()

    def refused(**kw):
        with pytest.raises(UserError) as e:
            run(build_config(BenchmarkConfig, {"out_dir": str(out), **kw}))
        return str(e.value)

    assert "no such folder" in refused(models=f"{tmp_path / 'missing' / 'folder'},distilbert")
    (tmp_path / "empty").mkdir()
    assert "no config.json" in refused(models=f"{tmp_path / 'empty'}")
    (tmp_path / "bad.json").write_text("{}")
    assert "model_type" in refused(models=str(tmp_path / "bad.json"))
    assert "fp16" in refused(models=str(tiny / "shallow.json"), precisions="fp16")
    assert "max_position_embeddings" in refused(models=str(tiny / "tiny_hf"), seq_lens="64,512")
    assert "--device cuda" in refused(models=str(tiny / "shallow.json"), device="cuda")
    assert not out.exists()
    with pytest.raises(ConfigError, match="--out_dir"):
        build_config(BenchmarkConfig, {"models": "distilbert"})
    with pytest.raises(ConfigError, match="did you mean --seq_lens"):
        build_config(BenchmarkConfig, {"out_dir": "x", "seq_len": "128"})
    with pytest.raises(ConfigError, match="--mode train needs a teacher"):
        build_config(BenchmarkConfig, {"out_dir": "x", "mode": "train", "models": "distilbert"})


def test_builtins_have_the_papers_sizes():
    sizes = {}
    for name in ("bert-base", "distilbert"):
        spec = resolve_spec(name)
        model = build(spec)
        sizes[name] = param_counts(model)
        if name == "distilbert":
            assert disk_bytes(spec, model) == pytest.approx(4 * sizes[name]["params_total"], rel=1e-3)
        del model
    # bert-base-uncased (with pooler) and distilbert-base-uncased as published: 110M and 66M
    assert sizes["bert-base"]["params_total"] == 109_482_240
    assert sizes["distilbert"]["params_total"] == 66_362_880
    assert sizes["bert-base"]["params_embedding"] == (30522 + 512 + 2) * 768
    assert set(BUILTINS) >= {"bert-base", "distilbert"}


def test_sts_pairs_are_deterministic_and_sts_like():
    a, b = I.sts_pairs(200, seed=0), I.sts_pairs(200, seed=0)
    assert a == b and len(a) == 200 and a != I.sts_pairs(200, seed=1)
    assert len(set(a)) > 100
    words = [len(s.split()) for pair in a for s in pair]
    assert 6 < np.mean(words) < 16 and max(words) > 20


def test_random_ids_are_real_tokens_not_specials():
    specials = {0, 100, 101, 102, 103}
    batch = I.random_ids(4, 64, 30522, specials, seed=0)
    ids = batch["input_ids"]
    assert ids.shape == (4, 64) and (batch["attention_mask"] == 1).all()
    assert (ids[:, 0] == 101).all() and (ids[:, -1] == 102).all()
    inner = ids[:, 1:-1]
    assert inner.min() >= 999 and inner.max() < 30522
    assert not any(int(x) in specials for x in inner.flatten())
    assert len(inner.unique()) > 200  # not a constant
    small = I.random_ids(2, 16, 50, {0, 1, 2, 3}, seed=0)["input_ids"][:, 1:-1]
    assert small.min() >= 4 and small.max() < 50


def test_interleaved_timing_and_statistics():
    order = []
    calls = [lambda i: order.append(("a", i)), lambda i: order.append(("b", i))]
    times = time_interleaved(calls, n_inputs=2, warmup=1, repeats=2)
    assert [t.shape for t in times] == [(2, 2), (2, 2)]
    # warm-up a0 b0 a1 b1, then round 0 in order, round 1 reversed
    assert order == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 0), ("b", 0), ("a", 1), ("b", 1),
                     ("b", 0), ("a", 0), ("b", 1), ("a", 1)]
    p = percentiles(np.array([0.001, 0.002, 0.003, 0.004, 0.1]))
    assert p["p50_ms"] == pytest.approx(3.0) and p["p50_ms"] <= p["p90_ms"] <= p["p99_ms"] <= 100.0
    # a drift that hits both models alike leaves the paired ratio at 2
    drift = np.linspace(1, 5, 20)
    assert paired_ratio(2 * drift, drift) == pytest.approx(2.0)


def test_peak_memory_sees_an_allocation():
    def call():
        x = torch.ones(64 * 1024 * 1024 // 4)  # 64 MB, touched
        return float(x.sum())

    mem = peak_memory(call, "cpu")
    assert mem["peak_mem_delta_bytes"] > 48 * 1024 * 1024
    assert peak_memory(lambda: None, "cpu")["peak_mem_delta_bytes"] < 16 * 1024 * 1024
