"""Rewrite captions at 10 levels of uniqueness with an LLM (stage 1 of the study).

    python perturbed/create_dataset.py                      # gpt-4o-mini over minhuh/prh wit_1024
    python perturbed/create_dataset.py --base_url http://127.0.0.1:8000/v1 --model my-model \\
        --captions_file captions.jsonl --num_samples 50
    python perturbed/create_dataset.py --validate perturbed/data.json

The key comes from OPENAI_API_KEY or a .env file (see .env.sample). A rerun skips the captions
already done; --force redoes them. Exit status: 0 done, 1 some captions failed (listed in the
failures file; rerun to retry only them), 2 bad input or a fault that stopped the run.
Thin command line over `platonic.captions.generate`.
"""

from platonic.captions.generate import main
from platonic.run.exit_codes import run_cli

__all__ = ["main"]

if __name__ == "__main__":
    run_cli(main)
