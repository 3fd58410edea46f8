#!/bin/bash
# Fine-tune one model on the GLUE tasks: a job array, one task per array element, all at once.
#
#   cd dstrain && MODEL=runs/distill-1234/student sbatch slurm/finetune_glue.sh
#   MODEL=... GLUE_DIR=data/glue sbatch slurm/finetune_glue.sh --num_seeds 5     # offline, 5 seeds each
#   MODEL=... TASKS=rte,mrpc,stsb sbatch --array=0-2 slurm/finetune_glue.sh --lr 3e-5
#   python dstrain/cli.py glue_table runs/finetune-<jobid>/*/                     # after the array ends
#
# Array element i fine-tunes the i-th entry of TASKS; results go to RUNS_DIR/<job name>-<array job id>/<task>/
# (config.json, tb/, model/, predictions, metrics.json). Arguments after the script name go to
# `dstrain/cli.py finetune` as they are. Relative paths are relative to DSTRAIN_HOME (default: the folder
# you ran sbatch from, which must be the dstrain checkout). Fine-tuning runs are short: no requeue.
#
# ---- Slurm resources: edit these defaults here, or override them on the sbatch command line -------------
#SBATCH --job-name=finetune
#SBATCH --array=0-8
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --output=%x-%A_%a.out
set -euo pipefail

if [[ -z ${SLURM_JOB_ID:-} ]]; then
  echo "dstrain-slurm: error: $0 is a Slurm batch script; submit it with 'MODEL=... sbatch $0 [finetune flags]'" \
       "from the dstrain checkout (running it directly starts nothing)" >&2
  exit 2
fi
DSTRAIN_HOME=${DSTRAIN_HOME:-$SLURM_SUBMIT_DIR}
if [[ ! -f $DSTRAIN_HOME/slurm/lib.sh || ! -f $DSTRAIN_HOME/dstrain/cli.py ]]; then
  echo "dstrain-slurm: error: DSTRAIN_HOME=$DSTRAIN_HOME is not a dstrain checkout (no slurm/lib.sh," \
       "dstrain/cli.py); run sbatch from the checkout or set DSTRAIN_HOME" >&2
  exit 2
fi
cd "$DSTRAIN_HOME"
source slurm/lib.sh

# ---- settings (environment overrides) --------------------------------------------------------------------
MODEL=${MODEL:-}                              # required: a save_pretrained folder, e.g. runs/distill-1234/student
TASKS=${TASKS:-cola,sst2,mrpc,stsb,qqp,mnli,qnli,rte,wnli}   # array element i runs the i-th task
GLUE_DIR=${GLUE_DIR:-}                        # optional: GLUE as distributed (CoLA/, SST-2/, ...); else the HF cache
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}    # ranks for one task
DS_CONFIG=${DS_CONFIG:-}                      # empty: finetune picks ds_configs/finetune_{gpu,cpu}.json
RUNS_DIR=${RUNS_DIR:-runs}
SWEEP_DIR=${SWEEP_DIR:-$RUNS_DIR/${SLURM_JOB_NAME}-${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( ${SLURM_CPUS_PER_TASK:-1} / GPUS_PER_NODE > 0 ? ${SLURM_CPUS_PER_TASK:-1} / GPUS_PER_NODE : 1 ))}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}
export PYTHONUNBUFFERED=1

# ---- checks ------------------------------------------------------------------------------------------------
pick_python
[[ -n $MODEL ]] || die "MODEL is not set: the model folder to fine-tune, e.g. MODEL=runs/distill-1234/student sbatch $0"
check_dir MODEL "$MODEL" "model folder" "Point MODEL at a save_pretrained folder (a run's student/)."
check_gpus
IFS=, read -r -a task_list <<< "$TASKS"
index=${SLURM_ARRAY_TASK_ID:-0}
(( index < ${#task_list[@]} )) || die "array index $index but TASKS has ${#task_list[@]} task(s) ($TASKS);" \
  "submit with --array=0-$(( ${#task_list[@]} - 1 )) or list more TASKS"
TASK=${task_list[$index]}
[[ -z $DS_CONFIG ]] || check_file DS_CONFIG "$DS_CONFIG" "DeepSpeed config" "Shipped: $(ls ds_configs/*.json | tr '\n' ' ')"
check_dir RUNS_DIR "$(dirname "$SWEEP_DIR")" "parent of the sweep folder" \
  "Create it on a filesystem every node sees (mkdir -p), or set RUNS_DIR."
data_args=()
if [[ -n $GLUE_DIR && $TASK != shakespeare_genre && $TASK != squad ]]; then
  # GLUE as distributed names its folders CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE, WNLI
  declare -A glue_folder=([cola]=CoLA [sst2]=SST-2 [mrpc]=MRPC [stsb]=STS-B [qqp]=QQP [mnli]=MNLI [qnli]=QNLI
                          [rte]=RTE [wnli]=WNLI)
  check_dir GLUE_DIR "$GLUE_DIR/${glue_folder[$TASK]:-$TASK}" "data of task $TASK" \
    "GLUE_DIR must hold the GLUE folders as distributed (CoLA/, SST-2/, ...), each with train.tsv and dev.tsv."
  data_args=(--data_dir "$GLUE_DIR/${glue_folder[$TASK]:-$TASK}")
fi
ds_args=()
[[ -z $DS_CONFIG ]] || ds_args=(--ds_config "$DS_CONFIG")
mkdir -p "$SWEEP_DIR"
OUT_DIR=$(realpath "$SWEEP_DIR")/$TASK
log "job ${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}_$index: finetune $MODEL on $TASK with $GPUS_PER_NODE rank(s) on" \
    "$(hostname); results in $OUT_DIR"
log "follow it: tensorboard --logdir $(realpath "$SWEEP_DIR")"

launcher=("$PYTHON")
if (( GPUS_PER_NODE > 1 )); then
  launcher=("$PYTHON" -m torch.distributed.run --standalone --nproc-per-node="$GPUS_PER_NODE")
fi
srun --ntasks=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" --kill-on-bad-exit=1 \
  "${launcher[@]}" dstrain/cli.py finetune --model "$MODEL" --task "$TASK" --out_dir "$OUT_DIR" \
  "${data_args[@]}" "${ds_args[@]}" "$@"
log "done: $OUT_DIR/metrics.json"
