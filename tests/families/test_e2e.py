"""One real 2-rank DeepSpeed `distill` per family on shards built from the embedded corpus with that family's
tokenizer: the loss falls, the export loads with the Auto class and runs the pipeline, and `benchmark` sizes
and times teacher vs student. (One launch per family, 8 steps, tiny random teachers.)"""

from __future__ import annotations

import json

import pytest

from tests.families.conftest import save_teacher
from tests.launch import run_cli
from tests.train.test_distill_e2e import scalars

# family -> (shards fixture, tokenizer fixture or None for the session's WordPiece, student class, student layers)
FAMILIES = {
    "distilbert": ("tiny_shards_dir", None, "DistilBertForMaskedLM", 3),
    "xlm-roberta": ("xlmr_shards_dir", "xlmr_tokenizer_dir", "XLMRobertaForMaskedLM", 2),
    "modernbert": ("tiny_shards_dir", None, "ModernBertForMaskedLM", 3),
    "gpt2": ("gpt2_shards_dir", "gpt2_tokenizer_dir", "GPT2LMHeadModel", 2),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_run(request, tmp_path_factory):
    family = request.param
    shards_fx, tok_fx, _, _ = FAMILIES[family]
    shards = request.getfixturevalue(shards_fx)
    tok = request.getfixturevalue(tok_fx or "tiny_tokenizer_dir")
    root = tmp_path_factory.mktemp(f"e2e_{family}")
    teacher = save_teacher(root / "teacher", family, tok)
    out = root / "run"
    flags = dict(teacher=teacher, data=shards, out_dir=out, ds_config="ds_configs/cpu_zero2.json", max_steps=8,
                 micro_batch_size_per_gpu=4, grad_accum_steps=1, lr=3e-3, warmup_frac=0.25, log_every=1,
                 eval_every=0, eval_batches=2, save_every=0, keep_last=1, seed=7, progress="false")
    # a generous limit: on a shared 2-core machine the launch can wait minutes for DeepSpeed's JIT-built shm op
    proc = run_cli("distill", *[x for k, v in flags.items() for x in (f"--{k}", str(v))], ranks=2, timeout=1200)
    from dstrain.benchmark.run import benchmark

    benchmark(models=f"{teacher},{out / 'student'}", out_dir=str(root / "bench"), seq_lens="32", batch_sizes="2",
              precisions="fp32", warmup=1, repeats=3, memory=False)
    return family, teacher, out, root / "bench", proc.stdout + proc.stderr


def test_distill_lowers_the_loss_and_exports_a_working_model(family_run):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, pipeline

    family, teacher, out, _, log = family_run
    _, _, cls_name, layers = FAMILIES[family]
    causal = family == "gpt2"
    lm = "clm" if causal else "mlm"
    sc = scalars(out)
    assert {"train/loss_total", "train/loss_ce", f"train/loss_{lm}", "train/loss_cos"} <= set(sc)
    assert f"train/loss_{'mlm' if causal else 'clm'}" not in sc  # the family's LM term only
    loss = sc["train/loss_total"]
    assert sorted(loss) == list(range(1, 9))
    assert (loss[7] + loss[8]) / 2 < (loss[1] + loss[2]) / 2  # the loss falls
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["layer_map_used"] == list(range(0, 2 * layers, 2))  # every other teacher block
    model = (AutoModelForCausalLM if causal else AutoModelForMaskedLM).from_pretrained(out / "student")
    assert type(model).__name__ == cls_name and model.config.num_hidden_layers == layers
    if family == "modernbert":  # copied blocks 0, 2, 4 of a global-every-3rd teacher: the pattern follows them
        assert model.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
        assert AutoConfig.from_pretrained(out / "student").layer_types == model.config.layer_types
    if causal:
        gen = pipeline("text-generation", model=str(out / "student"))
        text = gen("The king", max_new_tokens=5, do_sample=False)[0]["generated_text"]
        assert text.startswith("The king") and len(text) > len("The king")
    else:
        fill = pipeline("fill-mask", model=str(out / "student"))
        preds = fill(f"the king is {fill.tokenizer.mask_token} .")
        assert len(preds) == 5 and all(0.0 <= p["score"] <= 1.0 for p in preds)


def test_benchmark_sizes_and_times_teacher_vs_student(family_run):
    family, _, _, bench, _ = family_run
    _, _, _, layers = FAMILIES[family]
    res = json.loads((bench / "benchmark.json").read_text())
    t, s = res["models"]
    assert (t["num_layers"], s["num_layers"]) == (2 * layers, layers)
    assert s["params_total"] < t["params_total"] and s["params_non_embedding"] < t["params_non_embedding"]
    rows = res["inference"]
    assert {r["model"] for r in rows} == {t["name"], s["name"]} and all(r["p50_ms"] > 0 for r in rows)
