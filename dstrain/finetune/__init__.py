"""Fine-tuning and evaluation: GLUE, SQuAD v1.1 and the offline Shakespeare genre task.

    python dstrain/cli.py finetune --model RUN/student --task sst2 --out_dir runs/sst2
    deepspeed dstrain/cli.py finetune --model bert-base-uncased --task squad --out_dir runs/squad
    python dstrain/cli.py glue_table runs/teacher-* runs/student-*
"""
