"""No host synchronisation in the micro-step: every op of a real step (tiny BERT teacher -> DistilBERT student,
batches from the real loader and collate) is traced at the dispatch level, and an op that makes the host wait for
the device fails the test. On CPU nothing waits, but the same ops would on a GPU:
    aten.nonzero (boolean indexing, masked_select), aten._local_scalar_dense (.item(), bool(t), int(t)),
    aten.masked_select, aten.index / index_put with a boolean index, and Tensor.tolist / Tensor.numpy.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_OPS = {"aten::nonzero", "aten::_local_scalar_dense", "aten::masked_select", "aten::is_nonzero",
            "aten::nonzero_static", "aten::equal"}


class SyncTracer(TorchDispatchMode):
    """Records every op; `syncs` lists the ones that need the host to read device memory."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []
        self.syncs: list[str] = []
        self.sdpa_masks: list[bool] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        self.ops.append(name)
        if name in SYNC_OPS:
            self.syncs.append(name)
        if name in ("aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"):
            idx = args[1] if len(args) > 1 else kwargs.get("indices")
            if any(t is not None and t.dtype == torch.bool for t in idx or ()):
                self.syncs.append(f"{name} with a boolean index")
        if "scaled_dot_product" in name and "backward" not in name:
            mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
            self.sdpa_masks.append(isinstance(mask, torch.Tensor))
        return func(*args, **kwargs)


class _NoHostRead:
    """Tensor.tolist / .numpy fail inside the traced region (they do not pass through the dispatcher)."""

    def __enter__(self):
        self.saved = torch.Tensor.tolist, torch.Tensor.numpy

        def refuse(self_, *a, **k):
            raise AssertionError("host read of a tensor (tolist/numpy) inside the micro-step")

        torch.Tensor.tolist = refuse
        torch.Tensor.numpy = refuse
        return self

    def __exit__(self, *exc):
        torch.Tensor.tolist, torch.Tensor.numpy = self.saved


@pytest.fixture(scope="module")
def models_and_batches(tiny_teacher_dir, tiny_shards_dir):
    from dstrain.data import MLMMasker, ShardSet, build_loader
    from dstrain.models import StudentForDistill, build_student, load_teacher

    teacher = load_teacher(str(tiny_teacher_dir))
    student, _ = build_student(teacher, teacher.config, None, "even", "teacher", 0)
    shards = ShardSet.open(tiny_shards_dir, "train")
    loader = build_loader(shards, micro_batch_size=8, rank=0, world_size=1, num_workers=0, seed=0,
                          masker=MLMMasker.for_shards(shards, smoothing=0.7))
    padded = unpadded = None
    for b in loader:
        if b["padded"] and padded is None:
            padded = b
        if padded is not None:
            break
    # a batch without padding: every sequence cut to the shortest one's length (the collate function's fields
    # rebuilt by the same host-side helper)
    from dstrain.data.loader import row_index

    n = int(padded["attention_mask"].sum(1).min())
    cut = {k: padded[k][:, :n].contiguous() for k in ("input_ids", "attention_mask", "labels")}
    cut["labels"][:, 1] = cut["input_ids"][:, 1]  # at least one masked row
    unpadded = {**cut, **row_index(cut["attention_mask"], cut["labels"])}
    assert padded["padded"] and not unpadded["padded"]
    return teacher, StudentForDistill(student).train(), padded, unpadded


@pytest.mark.parametrize("which", ["padded", "unpadded"])
@pytest.mark.parametrize("restrict", [False, True])
def test_micro_step_forward_loss_backward_has_no_sync(models_and_batches, which, restrict):
    from dstrain.train.step import LossSettings, compute_losses

    teacher, student, padded, unpadded = models_and_batches
    batch = padded if which == "padded" else unpadded
    student.zero_grad(set_to_none=True)
    tracer = SyncTracer()
    with _NoHostRead(), tracer:
        total, terms = compute_losses(student, teacher, batch, LossSettings(restrict_ce_to_mask=restrict))
        total.backward()
    assert len(tracer.ops) > 200  # the tracer saw the step
    assert tracer.syncs == [], f"sync-causing ops in the micro-step: {sorted(set(tracer.syncs))}"
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert torch.isfinite(total) and set(terms) == {"ce", "mlm", "cos"}
    # without padding the encoders get no attention mask (SDPA may take its flash kernel); with padding, a mask
    assert tracer.sdpa_masks and all(tracer.sdpa_masks) == (which == "padded")
    assert any(tracer.sdpa_masks) == (which == "padded")


def test_the_old_step_would_have_failed(models_and_batches):
    """The tracer catches what the step used to do: boolean row gathers and truth tests of device tensors."""
    from dstrain.train.step import LossSettings, reference_losses

    teacher, student, padded, _ = models_and_batches
    tracer = SyncTracer()
    with tracer:
        total, _ = reference_losses(student, teacher, padded, LossSettings())
        total.backward()
    assert "aten::index with a boolean index" in tracer.syncs  # hidden[rows]: a nonzero on a GPU
    assert "aten::_local_scalar_dense" in tracer.syncs  # transformers' padding_mask.all() on a 2-D mask


def test_deepspeed_engine_backward_adds_no_sync(models_and_batches):
    """Through a real DeepSpeed engine (ZeRO-2, fp32, CPU): forward, loss and engine.backward. engine.step (the
    optimizer: overflow check, clipping) is outside the micro-step and not traced."""
    import json
    from pathlib import Path

    import deepspeed

    from dstrain.models import StudentForDistill, build_student
    from dstrain.runtime import init_distributed, resolve_ds_config
    from dstrain.train.step import LossSettings, compute_losses

    teacher, _, padded, _ = models_and_batches
    init_distributed()
    student, _ = build_student(teacher, teacher.config, None, "even", "teacher", 0)
    ds = json.loads((Path(__file__).resolve().parents[2] / "ds_configs" / "cpu_zero2.json").read_text())
    cfg, _ = resolve_ds_config(ds, micro_batch_size_per_gpu=8, grad_accum_steps=1, global_batch_size=8,
                               precision="fp32", device_type="cpu", gradient_clipping=5.0)
    assert cfg["timers"] == {"throughput": {"enabled": False}}
    engine, _, _, _ = deepspeed.initialize(model=StudentForDistill(student), config=cfg,
                                           optimizer=torch.optim.AdamW(student.parameters(), lr=1e-4))
    try:
        tracer = SyncTracer()
        with _NoHostRead(), tracer:
            total, _ = compute_losses(engine, teacher, padded, LossSettings())
            engine.backward(total)
        assert tracer.syncs == [], sorted(set(tracer.syncs))
        engine.step()
    finally:
        engine.destroy()
