"""The generation run: `num_workers` requests in flight, every finished caption durable at once."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from tqdm import tqdm

from platonic.captions.client import (
    CaptionRequester,
    Finished,
    RateLimiter,
    RequestPolicy,
    make_client,
)
from platonic.captions.prompt import estimated_request_tokens, image_data_uri
from platonic.captions.sources import CaptionSource
from platonic.captions.store import ResultStore


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
