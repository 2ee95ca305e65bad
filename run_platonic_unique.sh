#!/usr/bin/env bash
# The uniqueness study end to end: extract (every level, one pass) -> measure -> plot.
# Run with --help for the settings. Each stage skips outputs that are already current, so a
# rerun resumes where the last one stopped; Ctrl-C stops the running stage and keeps only
# finished files.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bash run_platonic_unique.sh [--option VALUE ...]

Extract features at every uniqueness level (one pass), measure language-vision alignment per
level, then plot alignment against uniqueness and language performance.

With no options: the offline embedded default (model set `demo` on the embedded rendered
image-caption set, levels 0,10,...,100), on the CPU.

Each option may also be given as an environment variable of the same name in capitals
(--base_dir DIR is BASE_DIR=DIR); an option on the command line wins.
  --base_dir DIR       where everything goes (default: results); features in
                       DIR/u={level}_features, alignment in DIR/u={level}_alignment
  --modelset NAME      demo (default; offline), val, test or custom (custom reads the JSON list
                       named by $PLATONIC_CUSTOM_MODELS)
  --dataset NAME       embedded (default), minhuh/prh, or a local imagefolder directory
  --subset NAME        minhuh/prh: Hub revision (default wit_1024); embedded: seed<N> (default seed0)
  --captions FILE      uniqueness captions in the published format (perturbed/data.json),
                       passed to extract_features.py as --json_perturbations; the embedded set
                       has levels of its own and needs none
  --levels SPEC        'all', '0,50,100', '0:100:10' or '0,10,...,100' (default: all = 0,10,...,100)
  --metric NAME        alignment metric (default: mutual_knn)
  --topk K             neighbours for kNN metrics (default: 10)
  --null N             permutations of the null distribution of every score (chance band,
                       p-values, calibrated scores; default: 100; 0: off)
  --num_samples N      first N image-caption pairs (default: all; embedded: 256)
  --device NAME        cpu, cuda, cuda:1 (default: cuda if available)
  --batch_size N       captions/images per forward pass (default: 32)
  --plot_dir DIR       figures, tidy CSV and summary.md (default: BASE_DIR/plots); the plot
                       stage remakes them when an alignment result, a bits-per-byte value or
                       a plot setting changes (delete .inputs.json in the study's plot
                       folder to force it)
  --ray [ADDRESS]      run extract and measure as Ray tasks: 'auto' joins the running cluster
                       (after `ray start`), host:port joins that one, no value starts a local
                       Ray instance; see docs/ray.md
  --ray_retries N      with --ray: times Ray reruns a task whose worker died (default: 3)
  -h, --help           this text

Environment only: PYTHON, the interpreter used when .venv/bin/python (made by setup.sh) is
absent, with the platonic package installed (default: python).

The paper's setting (needs network and a GPU):
  bash run_platonic_unique.sh --modelset val --dataset minhuh/prh --subset wit_1024 \
      --captions perturbed/data.json --base_dir /scratch/platonic --device cuda
On a Ray cluster (every node with this repository and its .venv at the same path):
  bash run_platonic_unique.sh --modelset val --dataset minhuh/prh --subset wit_1024 \
      --captions perturbed/data.json --base_dir /shared/platonic --ray auto
EOF
}

OPTIONS=(BASE_DIR MODELSET DATASET SUBSET CAPTIONS LEVELS METRIC TOPK NULL NUM_SAMPLES DEVICE
  BATCH_SIZE PLOT_DIR RAY RAY_RETRIES)
# Options whose value may be left out, and what they mean then: --ray alone, a local Ray instance.
declare -A OPTIONAL_VALUES=([RAY]=local)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/stages.sh
source "$ROOT/lib/stages.sh"

# Levels as one explicit list and the dataset's default subset, from the library's own rules;
# the output folders checked the same way (a file in their place is an error before any work).
RESOLVE='
import sys
from platonic.data.datasets import dataset_label
from platonic.data.levels import parse_levels
from platonic.errors import PlatonicError
from platonic.run.cli_args import folder_problem
from platonic.run.exit_codes import run_cli

def main(argv):
    levels, dataset, subset, base_dir, plot_dir = argv
    for flag, path in (("--base_dir", base_dir), ("--plot_dir", plot_dir)):
        if problem := folder_problem(path):
            raise PlatonicError(f"{flag}: {problem}")
    print(",".join(map(str, parse_levels(levels))), dataset_label(dataset, subset or None)[1] or "")

run_cli(main, sys.argv[1:])
'

remove_temporary_files() {
  local dirs=()
  shopt -s nullglob
  dirs=("$BASE_DIR"/u=*_features "$BASE_DIR"/u=*_alignment)
  [[ -d $PLOT_DIR ]] && dirs+=("$PLOT_DIR")
  ((${#dirs[@]})) && find "${dirs[@]}" -type f -name '.*.tmp' -delete
  return 0
}

extract() {
  local args=(--modelset "$MODELSET" --dataset "$DATASET" --levels "$LEVEL_LIST"
    --output_dir "$BASE_DIR/u={}_features" --batch_size "$BATCH_SIZE")
  [[ -n $SUBSET ]] && args+=(--subset "$SUBSET")
  [[ -n $CAPTIONS ]] && args+=(--json_perturbations "$CAPTIONS")
  [[ -n $NUM_SAMPLES ]] && args+=(--num_samples "$NUM_SAMPLES")
  [[ -n $DEVICE ]] && args+=(--device "$DEVICE")
  args+=("${RAY_FLAGS[@]}")
  run_stage extract "$PY" "$ROOT/extract_features.py" "${args[@]}"
}

measure() {
  local args=(--modelset "$MODELSET" --dataset "$DATASET" --subset "$SUBSET"
    --levels "$LEVEL_LIST" --metric "$METRIC" --topk "$TOPK" --null "$NULL"
    --input_dir "$BASE_DIR/u={}_features" --output_dir "$BASE_DIR/u={}_alignment")
  [[ -n $DEVICE ]] && args+=(--device "$DEVICE")
  args+=("${RAY_FLAGS[@]}")
  run_stage measure "$PY" "$ROOT/measure_alignment.py" "${args[@]}"
}

# The plot stage itself leaves figures made from the same study with the same settings; its
# output ends with where the summary is, which the report reads.
plot() {
  local args=(--modelset "$MODELSET" --dataset "$DATASET" --subset "$SUBSET"
    --levels "$LEVEL_LIST" --metric "$METRIC" --topk "$TOPK" --same_scale
    --features_dir "$BASE_DIR/u={}_features" --align_dir "$BASE_DIR/u={}_alignment"
    --plot_dir "$PLOT_DIR")
  run_stage plot "$PY" "$ROOT/plot_alignment.py" "${args[@]}" >"$SCRATCH"
  cat "$SCRATCH"
}

report() {
  local summary
  summary=$(sed -n 's/^summary: //p' "$SCRATCH")
  echo
  echo "== done"
  echo "features:         $BASE_DIR/u={level}_features"
  echo "alignment:        $BASE_DIR/u={level}_alignment"
  echo "plots and tables: $(dirname "$summary")"
  echo
  # The headline numbers of the summary: overall rho, mean alignment per level, per family.
  sed -n '/^Overall Spearman rho/,/^## Per language model/p' "$summary" | sed '$d'
}

main() {
  parse_args "$@"
  BASE_DIR=${BASE_DIR:-results}
  MODELSET=${MODELSET:-demo}
  DATASET=${DATASET:-embedded}
  SUBSET=${SUBSET:-}
  CAPTIONS=${CAPTIONS:-}
  LEVELS=${LEVELS:-all}
  METRIC=${METRIC:-mutual_knn}
  TOPK=${TOPK:-10}
  NULL=${NULL:-100}
  NUM_SAMPLES=${NUM_SAMPLES:-}
  DEVICE=${DEVICE:-}
  BATCH_SIZE=${BATCH_SIZE:-32}
  RAY=${RAY:-}
  RAY_RETRIES=${RAY_RETRIES:-}
  ray_flags
  PLOT_DIR=${PLOT_DIR:-$BASE_DIR/plots}
  SCRATCH=$(mktemp)
  if [[ -x $ROOT/.venv/bin/python ]]; then PY=$ROOT/.venv/bin/python; else PY=${PYTHON:-python}; fi
  [[ $MODELSET == demo && $DATASET == embedded ]] && export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
  local resolved
  resolved=$("$PY" -c "$RESOLVE" "$LEVELS" "$DATASET" "$SUBSET" "$BASE_DIR" "$PLOT_DIR")
  read -r LEVEL_LIST SUBSET <<<"$resolved"
  extract
  measure
  plot
  report
}

install_signal_handlers
trap 'rm -f "${SCRATCH:-}"' EXIT
main "$@"
