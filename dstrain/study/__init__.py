"""The main job: a miniature DistilBERT study on the embedded Shakespeare corpus, end to end.

    python dstrain/cli.py study --out_dir runs/study            # the full study (~16.5 min on 2 idle cores, docs/STUDY.md)
    python dstrain/cli.py study --out_dir runs/quick --quick    # a smoke run (< 3 min), what the tests run

`run.py` builds the plan (each step a public dstrain command), `steps.py` runs and caches it,
`report.py` writes RUN/REPORT.md and the figures from what the runs left in the folder.
"""
