"""The generation run: `num_workers` requests in flight, every finished caption durable at once.

Also the command line `perturbed/create_dataset.py` (`main`), which runs it, a dry run or a check.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass

from tqdm import tqdm

from platonic.captions import sources
from platonic.captions.client import (
    CaptionRequester,
    Finished,
    RateLimiter,
    RequestPolicy,
    make_client,
    resolve_endpoint,
)
from platonic.captions.prompt import estimated_request_tokens, image_data_uri
from platonic.captions.similarity import DEFAULT_MODEL, load_encoder
from platonic.captions.sources import CaptionSource
from platonic.captions.store import ResultStore, failures_path, finished_indices
from platonic.captions.validate import format_report, validate_file
from platonic.run import cli_args


@dataclass(frozen=True)
class RunSummary:
    asked: int
    already_done: int
    finished: int
    failed: int
    requests_sent: int


@dataclass(frozen=True)
class CostEstimate:
    requests: int
    already_done: int
    input_tokens: int
    output_tokens: int
    with_images: bool


def estimate_cost(source: CaptionSource, done: set[int]) -> CostEstimate:
    """What a run would ask for: one request per caption not yet done (retries not counted)."""
    todo = [c for i, c in source.captions.items() if i not in done]
    tokens = [estimated_request_tokens(c) for c in todo]
    return CostEstimate(len(todo), len(source.captions) - len(todo),
                        sum(t[0] for t in tokens), sum(t[1] for t in tokens),
                        source.image_of is not None)


class _Run:
    """State shared by the workers of one run."""

    def __init__(self, source: CaptionSource, store: ResultStore, requester: CaptionRequester,
                 todo: list[int], save_every: int, progress: tqdm) -> None:
        self.source = source
        self.store = store
        self.requester = requester
        self.queue: asyncio.Queue[int] = asyncio.Queue()
        for index in todo:
            self.queue.put_nowait(index)
        self.save_every = max(1, save_every)
        self.progress = progress
        self.finished = self.failed = self.since_flush = 0
        self.flushing = False

    async def worker(self) -> None:
        while not self.queue.empty():
            index = self.queue.get_nowait()
            caption = self.source.captions[index]
            image_url = await self._image_url(index)
            outcome = await self.requester.captions_for(caption, image_url)
            if isinstance(outcome, Finished):
                self.store.record(index, caption, outcome.captions)
                self.finished += 1
            else:
                self.store.record_failure(index, caption, outcome)
                self.failed += 1
                self.progress.set_postfix(failed=self.failed)
            self.progress.update()
            await self._maybe_flush()

    async def _image_url(self, index: int) -> str | None:
        if self.source.image_of is None:
            return None
        return await asyncio.to_thread(lambda: image_data_uri(self.source.image_of(index)))

    async def _maybe_flush(self) -> None:
        """Rewrite the output after every `save_every` finished captions (off the event loop)."""
        self.since_flush += 1
        if self.since_flush < self.save_every or self.flushing:
            return
        self.flushing, self.since_flush = True, 0
        try:
            await asyncio.to_thread(self.store.flush)
        finally:
            self.flushing = False


async def _run_workers(run: _Run, num_workers: int) -> None:
    tasks = [asyncio.create_task(run.worker()) for _ in range(num_workers)]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if task.exception() is not None:
            raise task.exception()


async def _generate(source: CaptionSource, store: ResultStore, todo: list[int], api_key: str,
                    base_url: str | None, policy: RequestPolicy, rpm: float | None,
                    num_workers: int, save_every: int) -> tuple[int, int, int]:
    client = make_client(api_key, base_url, policy.timeout)
    requester = CaptionRequester(client, policy, RateLimiter(rpm))
    with tqdm(total=len(todo), desc="captions", unit="caption") as progress:
        run = _Run(source, store, requester, todo, save_every, progress)
        try:
            await _run_workers(run, max(1, min(num_workers, len(todo))))
        finally:
            await client.close()
    return run.finished, run.failed, requester.sent


def generate(source: CaptionSource, store: ResultStore, api_key: str, base_url: str | None = None,
             policy: RequestPolicy | None = None, rpm: float | None = None,
             num_workers: int = 10, save_every: int = 10, force: bool = False) -> RunSummary:
    """Generate the captions of `source` not yet in `store` (all of them with `force`).

    Whatever happens (a fault that stops the run, Ctrl-C), finished captions are folded into
    the output before this returns or raises.
    """
    store.open(source.captions, force=force)
    todo = [i for i in sorted(source.captions) if not store.is_done(i)]
    finished = failed = sent = 0
    try:
        if todo:
            finished, failed, sent = asyncio.run(_generate(
                source, store, todo, api_key, base_url, policy or RequestPolicy(), rpm,
                num_workers, save_every))
    finally:
        store.close()
    return RunSummary(len(source.captions), len(source.captions) - len(todo), finished, failed,
                      sent)


# --- command line (perturbed/create_dataset.py) -------------------------------------------------

COMMAND_DESCRIPTION = "Rewrite captions at 10 levels of uniqueness with an LLM (stage 1 of the study)."


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=COMMAND_DESCRIPTION,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_argument_group("input (default: the Hub data set)")
    cli_args.add_dataset_args(src, dataset_help="Hub data set", subset_default=sources.DEFAULT_SUBSET,
                         subset_help="the data set's revision")
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
    faults.add_argument("--num_workers", type=cli_args.positive_int, default=10, help="requests in flight")
    faults.add_argument("--rpm", type=cli_args.positive_float, default=None, help="requests per minute")
    faults.add_argument("--timeout", type=cli_args.positive_float, default=60.0, help="seconds a request")
    faults.add_argument("--max_attempts", type=cli_args.positive_int, default=5,
                        help="replies per caption that fail validation before it is given up")
    faults.add_argument("--max_retries", type=int, default=8,
                        help="retries per caption after 429, 5xx, timeouts, lost connections")
    faults.add_argument("--backoff", type=cli_args.positive_float, default=1.0,
                        help="first backoff in seconds (doubles each retry, with jitter)")
    faults.add_argument("--max_backoff", type=cli_args.positive_float, default=60.0,
                        help="longest backoff in seconds (a longer Retry-After is honoured)")
    faults.add_argument("--save_every", type=cli_args.positive_int, default=10,
                        help="finished captions between rewrites of --save_path")
    sim = p.add_argument_group("similarities")
    sim.add_argument("--sim_model", default=DEFAULT_MODEL, help="sentence-transformers model: "
                     "Hub id, local folder, or 'offline' (the MiniLM shipped on PyPI); the "
                     "default falls back to 'offline', with a note, when it cannot be loaded; recorded "
                     "with the similarities, and an output holding another model's is refused")
    sim.add_argument("--sim_batch_size", type=cli_args.positive_int, default=64,
                     help="sentences per embedding batch")
    cli_args.add_device_arg(sim, help="for the similarity model (default: auto)")
    p.add_argument("--dry_run", action="store_true",
                   help="print how many requests and about how many tokens the run would cost")
    p.add_argument("--validate", metavar="FILE", help="check an existing caption file and stop")
    return p


def _source(args: argparse.Namespace) -> CaptionSource:
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


def _dry_run(source: CaptionSource, save_path: str, force: bool) -> int:
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
