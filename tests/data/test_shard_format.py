"""The shard format module is the one definition writer and reader share, and stays torch-free."""

import subprocess
import sys

from tests.launch import ROOT


def test_writer_and_reader_share_one_format_and_the_writer_does_not_import_torch():
    code = ("import sys; import data_prep.build_shards as w; import dstrain.shard_format as f; "
            "print('torch' in sys.modules, w.FORMAT is f.FORMAT, w.sha256_file is f.sha256_file)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "True"]
    from dstrain.data import shards
    from dstrain import shard_format

    assert (shards.FORMAT, shards.SAMPLE_MEMBER, shards.sha256_file) == (
        shard_format.FORMAT, shard_format.SAMPLE_MEMBER, shard_format.sha256_file)
