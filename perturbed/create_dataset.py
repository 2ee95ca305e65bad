"""Rewrite captions at 10 levels of uniqueness with an LLM (stage 1 of the study).

    python perturbed/create_dataset.py                      # gpt-4o-mini over minhuh/prh wit_1024
    python perturbed/create_dataset.py --base_url http://127.0.0.1:8000/v1 --model my-model \\
        --captions_file captions.jsonl --num_samples 50
    python perturbed/create_dataset.py --validate perturbed/data.json

The key comes from OPENAI_API_KEY or a .env file (see .env.sample). A rerun skips the captions
already done; --force redoes them. Exit status: 0 done, 1 some captions failed (listed in the
failures file; rerun to retry only them), 2 bad input or a fault that stopped the run.
"""

from __future__ import annotations

import argparse
import sys

from platonic.captions import sources
from platonic.captions.client import RequestPolicy, resolve_endpoint
from platonic.captions.generate import estimate_cost, generate
from platonic.captions.similarity import DEFAULT_MODEL, load_encoder
from platonic.captions.store import ResultStore, failures_path, finished_indices
from platonic.captions.validate import format_report, validate_file
from platonic.errors import run_cli


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_argument_group("input (default: the Hub data set)")
    src.add_argument("--dataset", default=sources.DEFAULT_DATASET, help="Hub data set")
    src.add_argument("--subset", default=sources.DEFAULT_SUBSET, help="the data set's revision")
    src.add_argument("--caption_idx", type=int, default=0, help="which of a row's captions")
    one = src.add_mutually_exclusive_group()
    one.add_argument("--captions_file", help="JSONL with a 'text' field per line, or CSV with "
                     "a 'text' column (an 'image' path per row for --images)")
    one.add_argument("--embedded", action="store_true", help="the embedded default data set")
    src.add_argument("--start", type=int, default=0, help="first row")
    src.add_argument("--num_samples", type=int, default=None, help="rows from --start (all)")
    p.add_argument("--save_path", default="perturbed/data.json", help="output, published format")
    p.add_argument("--force", action="store_true", help="redo captions already done (each old "
                   "caption is kept until its replacement is saved)")
    api = p.add_argument_group("model and server")
    api.add_argument("--model", default="gpt-4o-mini", help="model name on the server")
    api.add_argument("--base_url", default=None, help="any OpenAI-compatible server "
                     "(vLLM, Ollama, llama.cpp); default OPENAI_BASE_URL or OpenAI")
    api.add_argument("--temperature", type=float, default=None, help="(server default)")
    api.add_argument("--images", action="store_true",
                     help="send each row's image too (vision-capable models only)")
    api.add_argument("--image_detail", choices=["low", "high", "auto"], default="auto",
                     help="image resolution the model sees, with --images")
    faults = p.add_argument_group("concurrency and faults")
    faults.add_argument("--num_workers", type=_positive_int, default=10, help="requests in flight")
    faults.add_argument("--rpm", type=_positive_float, default=None, help="requests per minute")
    faults.add_argument("--timeout", type=_positive_float, default=60.0, help="seconds a request")
    faults.add_argument("--max_attempts", type=_positive_int, default=5,
                        help="replies per caption that fail validation before it is given up")
    faults.add_argument("--max_retries", type=int, default=8,
                        help="retries per caption after 429, 5xx, timeouts, lost connections")
    faults.add_argument("--backoff", type=_positive_float, default=1.0,
                        help="first backoff in seconds (doubles each retry, with jitter)")
    faults.add_argument("--max_backoff", type=_positive_float, default=60.0,
                        help="longest backoff in seconds (a longer Retry-After is honoured)")
    faults.add_argument("--save_every", type=_positive_int, default=10,
                        help="finished captions between rewrites of --save_path")
    sim = p.add_argument_group("similarities")
    sim.add_argument("--sim_model", default=DEFAULT_MODEL, help="sentence-transformers model: "
                     "Hub id, local folder, or 'offline' (the MiniLM shipped on PyPI); the "
                     "default falls back to 'offline', with a note, when it cannot be loaded; recorded "
                     "with the similarities, and an output holding another model's is refused")
    sim.add_argument("--sim_batch_size", type=_positive_int, default=64,
                     help="sentences per embedding batch")
    sim.add_argument("--device", default=None, help="for the similarity model (default: auto)")
    p.add_argument("--dry_run", action="store_true",
                   help="print how many requests and about how many tokens the run would cost")
    p.add_argument("--validate", metavar="FILE", help="check an existing caption file and stop")
    return p


def _source(args: argparse.Namespace) -> sources.CaptionSource:
    window = {"start": args.start, "num_samples": args.num_samples, "with_images": args.images}
    if args.embedded:
        return sources.from_embedded(**window)
    if args.captions_file:
        return sources.from_file(args.captions_file, caption_idx=args.caption_idx, **window)
    return sources.from_hub(args.dataset, args.subset, caption_idx=args.caption_idx, **window)


def _validate(path: str) -> int:
    report = validate_file(path)
    print(format_report(report))
    return 0 if report.ok else 1


def _dry_run(source: sources.CaptionSource, save_path: str, force: bool) -> int:
    done = set() if force else finished_indices(save_path)
    cost = estimate_cost(source, done)
    images = ("; each request also carries an image, priced per model and not counted here"
              if cost.with_images else "")
    print(f"dry run: {source.name}: {len(source.captions)} captions, {cost.already_done} "
          f"already in {save_path}; {cost.requests} requests, about {cost.input_tokens:,} "
          f"input and {cost.output_tokens:,} output tokens (retries not counted){images}")
    return 0


def _policy(args: argparse.Namespace) -> RequestPolicy:
    return RequestPolicy(model=args.model, timeout=args.timeout, max_attempts=args.max_attempts,
                         max_retries=max(0, args.max_retries), backoff=args.backoff,
                         max_backoff=args.max_backoff, temperature=args.temperature,
                         image_detail=args.image_detail)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.validate:
        return _validate(args.validate)
    api_key, base_url = (None, None) if args.dry_run else resolve_endpoint(args.base_url)
    source = _source(args)
    if args.dry_run:
        return _dry_run(source, args.save_path, args.force)
    encoder = load_encoder(args.sim_model, args.device)
    store = ResultStore(args.save_path, lambda originals, rewrites: encoder.similarities(
        originals, rewrites, args.sim_batch_size), encoder.name)
    summary = generate(source, store, api_key, base_url, _policy(args), args.rpm,
                       args.num_workers, args.save_every, args.force)
    print(f"{args.save_path}: {summary.finished} captions generated, {summary.already_done} "
          f"already done, {summary.failed} failed; {summary.requests_sent} requests sent")
    if summary.failed:
        print(f"{summary.failed} captions failed, see {failures_path(store.save_path)}; "
              "a rerun retries only those", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_cli(main)
