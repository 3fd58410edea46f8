"""The study's recipe: the full and --quick sizes, and the ablations. Imported by run.py (the plan) and
report.py (the tables); kept apart so that neither imports the other.
"""

# The recipe. Sizes come from docs/CALIBRATION.md and a sizing sweep (see docs/STUDY.md):
# at h256/vocab 8000 a 2-core CPU does ~4.5k tokens/s, too slow for a teacher, six students and 21
# fine-tunes in 15 minutes; a 4-layer h128 teacher on a 3,000-piece vocabulary and 64-token sequences
# costs ~1.3M parameters per token (~8 MFLOP per trained token), about 4x less.
FULL = dict(
    vocab_size=3000, max_seq_len=64, teacher_layers=4, hidden_size=128, num_heads=4, intermediate_size=512,
    teacher_steps=800, student_steps=300, global_batch_size=32, teacher_lr=1e-3, student_lr=1e-3,
    pretrain_dropout=0.0, pretrain_mlm_smoothing=0.0, pretrain_mlm_probability=0.4, restrict_ce_to_mask=True,
    eval_every=100, eval_batches=12, val_fraction=0.02,
    finetune_task="shakespeare_genre3", distill_seeds=2, finetune_seeds=2, finetune_lr=2e-4, finetune_epochs=3.0,
    finetune_max_seq_length=64, finetune_train_examples=2000, finetune_eval_examples=1570,
    bench_seq_lens="32,64", bench_batch_sizes="1,8", bench_repeats=10,
)
# Why these values (measured on 2 idle cores, see docs/STUDY.md):
# - The old recipe (BERT dropout 0.1, DistilBERT's count^-0.7 masking for the teacher too, 600 steps) left the
#   teacher at the unigram plateau: it answered "," at 97% of the masked positions, held-out loss 6.72 against
#   a unigram entropy of 6.27 nats. Nothing downstream could then tell teacher, student and MLM-only apart.
#   Uniform masking (BERT's own pretraining) and no dropout reach 6.00 at step 600 and 5.93 at step 1000.
# - Masking 40% instead of 15% in pretraining (Wettig et al. 2022, "Should you mask 15%?") gives more loss
#   positions per step: held-out loss 5.90 instead of 5.99 at step 800, same cost. Distillation keeps 15%.
# - KL on masked positions only: at unmasked positions the teacher mostly echoes the visible token; the
#   full-sequence KL made each distillation step ~40% dearer (students 131-166 s vs 103 s without the KL).
# - Fine-tuning lr 2e-4 (the paper fine-tunes gently, 2e-5..5e-5): at 3e-4 and 1e-3 every model, MLM-only
#   and random-init included, learned the genre task from scratch to 52-54%, so the score no longer said
#   anything about pretraining. On the same models (seed 0): at 1e-4 teacher 51.0%, student 50.8%, MLM-only
#   and random-init 42.1% (the majority class, every seed); at 2e-4 teacher 53.4%, student 53.7%, MLM-only
#   43.5% and random-init 42.5% (each learned the task in 1 of 3 seeds), seed spreads of teacher and
#   student under 0.6 points.
# - Power (issue #15): at 1 distillation seed x 3 fine-tuning seeds on 1,000 passages the three loss-term
#   ablations (0.1-0.2 points from the full loss) sat inside the seed spread, and the distillation seed's own
#   variation was not measured at all. Now 2 distillation seeds x 2 fine-tuning seeds (4 runs per
#   configuration, the distillation seed's variation inside the interval) on all 1,570 validation passages,
#   and the report gives each difference a paired-bootstrap interval.
# - Time (2 idle cores; measured 2026-11-25: 10.7 min wall, students 103 s each). The step types' relative
#   costs, measured alternately in one process at these sizes with 1 thread (2026-12-02, a busy machine,
#   so ratios only): teacher pretraining step 1.29, distill step with the KL on masked positions 1.00, on
#   every token 1.99, MLM-only step 0.81, genre fine-tuning step of a student 0.58. Estimate: 2 distillation
#   seeds add 5 distillations and an MLM-only run (~600 CPU-s) and 6 fine-tunings; with 2 fine-tuning seeds
#   instead of 3 the whole study is ~16 min with the step of 2026-12-02 (~14 min if the distillation step
#   gets >= 20% cheaper). Measured 2026-12-02 (docs/STUDY.md#result): 1,960 CPU-s, 18.6 min wall on
#   partly shared cores, ~16.5 min idle: 1.5 min over the 15-minute budget, kept for the power. The paper's loss (KL on every token: 8 of the 10 distillations pay ~1.4x per
#   student) would add ~3 min more, so it stays off (restrict_ce_to_mask=True); `--restrict_ce_to_mask
#   false` runs it. A stronger teacher (more teacher_steps) costs ~20 s per 100 steps on the critical path
#   and does not fit either. `--distill_seeds 1 --finetune_seeds 3` is the 10.7-minute study of 2026-11-25.
# - shakespeare_genre (6 genres, majority 28%) was too hard for these models: at fine-tuning lr 3e-4 most
#   seeds collapsed to the majority class. On the First Folio's three genres (shakespeare_genre3) teacher
#   and student never did.
# Quick: the same pipeline, every table filled, at toy sizes (a smoke test, not a result).
QUICK = dict(
    vocab_size=1000, max_seq_len=64, teacher_layers=2, hidden_size=64, num_heads=2, intermediate_size=256,
    teacher_steps=30, student_steps=20, global_batch_size=16, teacher_lr=1e-3, student_lr=1e-3,
    pretrain_dropout=0.0, pretrain_mlm_smoothing=0.0, pretrain_mlm_probability=0.4, restrict_ce_to_mask=True,
    eval_every=10, eval_batches=3, val_fraction=0.01,
    finetune_task="shakespeare_genre3", distill_seeds=1, finetune_seeds=2, finetune_lr=1e-3, finetune_epochs=1.0, finetune_max_seq_length=64,
    finetune_train_examples=192, finetune_eval_examples=192,
    bench_seq_lens="64", bench_batch_sizes="1", bench_repeats=3,
)

# name -> (what it is, distill flags). "mlm_only" is `pretrain` of a student-sized model (no teacher).
ABLATIONS = {
    "no_kl": ("without L_ce (the KL to the teacher's soft targets)", ["--alpha_ce", "0"]),
    "no_cos": ("without L_cos (hidden-state alignment)", ["--alpha_cos", "0"]),
    "no_mlm": ("without L_mlm (the student's own masked-LM loss)", ["--alpha_mlm", "0"]),
    "random_init": ("random initialisation instead of every other teacher layer", ["--student_init", "random"]),
    "mlm_only": ("MLM alone, random init, no teacher (same size and budget)", None),
}
