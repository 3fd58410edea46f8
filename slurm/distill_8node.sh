#!/bin/bash
# Distillation on several nodes: one Slurm task per node runs torchrun, which starts that node's ranks
# (one per GPU) and meets the other nodes through the c10d rendezvous on the head node.
#
#   cd dstrain && sbatch slurm/distill_8node.sh                        # 8 nodes x 8 GPUs (defaults below)
#   TEACHER=bert-base-uncased DATA=data/shards sbatch slurm/distill_8node.sh --max_steps 30000
#   sbatch --nodes=2 --gpus-per-node=4 slurm/distill_8node.sh          # any size: NODES follows the allocation
#   tensorboard --logdir runs/                                         # every job writes runs/<name>-<jobid>/tb
#
# Arguments after the script name go to `dstrain/cli.py distill` as they are (they win over the
# settings below). Every setting below can be overridden from the environment at submission
# (sbatch exports it to the job). Relative paths are relative to DSTRAIN_HOME (default: the folder
# you ran sbatch from, which must be the dstrain checkout).
#
# Preemption / time limit: Slurm sends SIGUSR1 PREEMPT_SECS before the time limit; every rank then
# checkpoints at the next step boundary and exits, and the job requeues itself; the requeued job (same
# job id, same run folder) resumes from that checkpoint (--resume auto). To stop a job for good use
# `scancel JOBID`; to checkpoint-and-requeue it now: `scancel --batch --signal=USR1 JOBID`.
#
# ---- Slurm resources: edit these defaults here, or override them on the sbatch command line -------------
#SBATCH --job-name=distill
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@600
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
# (--signal: seconds before the time limit to checkpoint; give it more than one step plus one save.
#  --requeue + --open-mode=append: the requeued job continues the same log file.)
set -euo pipefail

if [[ -z ${SLURM_JOB_ID:-} ]]; then
  echo "dstrain-slurm: error: $0 is a Slurm batch script; submit it with 'sbatch $0 [distill flags]'" \
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
NODES=${NODES:-$SLURM_JOB_NUM_NODES}          # must equal the allocation; checked below
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}  # ranks per node (CPU runs: any number)
COMMAND=${COMMAND:-distill}                   # or pretrain (then TEACHER is not passed)
TEACHER=${TEACHER:-bert-base-uncased}         # save_pretrained folder or a cached HF model name
DATA=${DATA:-data/shards}                     # from data_prep/build_shards.py
DS_CONFIG=${DS_CONFIG:-ds_configs/zero2_fp16.json}
RUNS_DIR=${RUNS_DIR:-runs}                    # must exist, on a filesystem every node sees
RUN_DIR=${RUN_DIR:-$RUNS_DIR/${SLURM_JOB_NAME}-${SLURM_JOB_ID}}  # same after a requeue: same job id
RESUME=${RESUME:-auto}                        # auto: continue from the newest checkpoint in RUN_DIR if any
MAX_REQUEUES=${MAX_REQUEUES:-20}              # stop requeueing after this many restarts
CPUS_PER_NODE=${CPUS_PER_NODE:-${SLURM_CPUS_ON_NODE:-1}}
# Threads per rank: the node's CPUs shared by its ranks (at least 1).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( CPUS_PER_NODE / GPUS_PER_NODE > 0 ? CPUS_PER_NODE / GPUS_PER_NODE : 1 ))}
# NCCL: reasonable defaults; any NCCL_* you export (NCCL_SOCKET_IFNAME, NCCL_IB_HCA, ...) reaches the ranks.
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}  # a dead peer fails the step, no hang
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}
export PYTHONUNBUFFERED=1

# ---- checks: fail in seconds with a message, not in a hung rendezvous ------------------------------------
pick_python
check_nodes
check_gpus
[[ $RESUME == auto || $RESUME == true || $RESUME == false ]] || die "RESUME=$RESUME: must be auto, true or false"
check_int MAX_REQUEUES "$MAX_REQUEUES"
check_file DS_CONFIG "$DS_CONFIG" "DeepSpeed config" "Shipped: $(ls ds_configs/*.json 2>/dev/null | tr '\n' ' ')"
check_dir DATA "$DATA" "shards" "Build them with data_prep/build_shards.py or point DATA at them."
check_dir RUNS_DIR "$(dirname "$RUN_DIR")" "parent of the run folder" \
  "Create it on a filesystem every node sees (mkdir -p), or set RUNS_DIR / RUN_DIR."
if [[ $RESUME == true && ! -d $RUN_DIR ]]; then
  die "RESUME=true but the run folder RUN_DIR=$RUN_DIR does not exist; set RUN_DIR to the run to continue"
fi
teacher_args=()
[[ $COMMAND == distill ]] && teacher_args=(--teacher "$TEACHER")

HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-$(free_port)}      # this script runs on the head node
mkdir -p "$RUN_DIR"
RUN_DIR=$(realpath "$RUN_DIR")                # absolute: the log says where to look from anywhere
rm -f "$RUN_DIR/PREEMPTED"                    # the marker of this attempt only
PREEMPT_MARKER=$RUN_DIR/PREEMPTED             # the trainer's "checkpointed and stopping" (see lib.sh)
log "job $SLURM_JOB_ID restart ${SLURM_RESTART_COUNT:-0}: $COMMAND on $NODES node(s) x $GPUS_PER_NODE rank(s)" \
    "($SLURM_JOB_NODELIST), rendezvous $HEAD_NODE:$MASTER_PORT, run folder $RUN_DIR"
log "follow it: tensorboard --logdir $RUN_DIR/tb  (or --logdir on the runs folder, to compare runs)"

# --cpus-per-task: srun does not inherit it from sbatch in Slurm 22.05; without it a CPU-binding
# cluster would pin the whole node's ranks to one core.
run_step srun --nodes="$NODES" --ntasks-per-node=1 --cpus-per-task="$CPUS_PER_NODE" --kill-on-bad-exit=1 \
  "${launch_prefix[@]}" \
  "$PYTHON" -m torch.distributed.run \
    --nnodes="$NODES" --nproc-per-node="$GPUS_PER_NODE" --max-restarts=0 "${torchrun_signals[@]}" \
    --rdzv-backend=c10d --rdzv-endpoint="$HEAD_NODE:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID" \
    dstrain/cli.py "$COMMAND" "${teacher_args[@]}" --data "$DATA" --ds_config "$DS_CONFIG" \
    --out_dir "$RUN_DIR" --resume "$RESUME" "$@"
finish_or_requeue "$RUN_DIR"
