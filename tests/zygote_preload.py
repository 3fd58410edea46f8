"""Imported once by the tests' rank server (tests/zygote.py) before it forks any rank: the third-party modules a
dstrain rank imports (`python -X importtime dstrain/cli.py distill ...`, `finetune ...`). Never dstrain itself.
DeepSpeed's Muon optimizer module is listed: ZeRO imports it at the first gradient reduction, and its
torch.compile decorator pulls in torch._inductor (1.7 CPU-s)."""

import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import deepspeed  # noqa: E402,F401
import deepspeed.runtime.zero.config  # noqa: E402,F401
import deepspeed.runtime.zero.muon.muon_optimizer  # noqa: E402,F401
import fire  # noqa: E402,F401
import torch  # noqa: E402,F401
import torch.utils.tensorboard  # noqa: E402,F401
import transformers  # noqa: E402,F401
import transformers.models.bert.modeling_bert  # noqa: E402,F401
import webdataset  # noqa: E402,F401
from transformers import AutoModel, AutoTokenizer  # noqa: E402,F401
import scipy.stats  # noqa: E402,F401  (finetune's metrics)
import sklearn.metrics  # noqa: E402,F401
