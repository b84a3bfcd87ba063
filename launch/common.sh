# shellcheck shell=bash
# What launch/tpu.sh and launch/gpu_slurm.sbatch share: errors, shell quoting, the --module /
# --config defaults, and the --dry_run convention. Sourced, never run; the script that sources it
# sets SCRIPT_NAME (e.g. tpu.sh) first, and DRY_RUN (1 with --dry_run, else 0) before it runs a
# command.

# The exit status of a training process whose job lost a process (ipt_jax/supervise.py): the same
# command, run again, resumes from the newest checkpoint. (Used by the scripts that source this.)
# shellcheck disable=SC2034
readonly RESTART_STATUS=75

# Prints "SCRIPT_NAME: error: MESSAGE" and where to find the usage, and exits with status 2.
die() {
  echo "$SCRIPT_NAME: error: $*" >&2
  echo "Run 'launch/$SCRIPT_NAME --help' for usage." >&2
  exit 2
}

# One word quoted for a POSIX shell, exactly as Python's shlex.quote quotes it.
quote() {
  local LC_ALL=C safe='^[A-Za-z0-9_@%+=:,./-]+$' q="'\"'\"'"
  if [[ $1 =~ $safe ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/$q}"
  fi
}

# A command line that a shell splits back into exactly these words (shlex.join).
quote_cmd() {
  local word line=''
  for word in "$@"; do
    line+="${line:+ }$(quote "$word")"
  done
  printf '%s\n' "$line"
}

# The dry-run convention: with --dry_run (DRY_RUN=1) prints the command, shell-quoted, on a line of
# its own to stdout and runs nothing; otherwise echoes it to stderr after "+ " and runs it.
run_or_print() {
  if [[ $DRY_RUN == 1 ]]; then
    quote_cmd "$@"
  else
    echo "+ $(quote_cmd "$@")" >&2
    "$@"
  fi
}

# Checks MODULE and CONFIG (the values of --module and --config) and fills in CONFIG's default:
# configs/pretrain.py for pre-training (ipt_jax.main); every other module needs --config.
check_module_config() {
  [[ -n $MODULE ]] || die "--module needs a value (e.g. --module=ipt_jax.finetune)"
  if [[ -z $CONFIG ]]; then
    [[ $MODULE == ipt_jax.main ]] ||
      die "--module=$MODULE needs --config (e.g. --config=configs/finetune.py:sr_x2)"
    CONFIG=configs/pretrain.py
  fi
}
