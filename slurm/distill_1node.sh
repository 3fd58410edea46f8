#!/bin/bash
# Distillation on one node: the same job as slurm/distill_8node.sh (same settings, checks, preemption and
# requeue; see that file), with single-node defaults. torchrun starts one rank per GPU.
#
#   cd dstrain && sbatch slurm/distill_1node.sh --max_steps 30000
#   GPUS_PER_NODE=4 sbatch --gpus-per-node=4 slurm/distill_1node.sh
#
# ---- Slurm resources: edit these defaults here, or override them on the sbatch command line -------------
#SBATCH --job-name=distill-1node
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@600
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
set -euo pipefail

if [[ -z ${SLURM_JOB_ID:-} ]]; then
  echo "dstrain-slurm: error: $0 is a Slurm batch script; submit it with 'sbatch $0 [distill flags]'" \
       "from the dstrain checkout (running it directly starts nothing)" >&2
  exit 2
fi
DSTRAIN_HOME=${DSTRAIN_HOME:-$SLURM_SUBMIT_DIR}
if [[ ! -f $DSTRAIN_HOME/slurm/distill_8node.sh ]]; then
  echo "dstrain-slurm: error: DSTRAIN_HOME=$DSTRAIN_HOME is not a dstrain checkout (no slurm/distill_8node.sh);" \
       "run sbatch from the checkout or set DSTRAIN_HOME" >&2
  exit 2
fi
# exec keeps this PID, so the USR1 that Slurm sends to the batch shell reaches the shared body's trap.
export DSTRAIN_HOME
exec bash "$DSTRAIN_HOME/slurm/distill_8node.sh" "$@"
