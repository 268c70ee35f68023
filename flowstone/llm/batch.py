"""Completing many prompts at once with bounded concurrency.

A suite's cases go out in parallel up to ``concurrency`` threads (the provider rate limits
still pace them). Results keep the input order. The first failure cancels what has not
started and is raised naming the item, so a partition is never half-written.

The batch needs only a client's ``complete``; it names that shape (``Completer``) here rather
than importing ``LLMClient``, so the client can import the batch and not the other way round.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Protocol

from flowstone.llm.errors import LLMError
from flowstone.llm.pricing import CostTotals
from flowstone.llm.types import Completion, Params, Prompt


class Completer(Protocol):
    """What a batch calls once per prompt: ``LLMClient.complete`` has this shape."""

    def complete(
        self,
        prompt: Prompt,
        *,
        params: Params | dict | None = ...,
        use_cache: bool = ...,
        totals: CostTotals | None = ...,
        repeat: int = ...,
    ) -> Completion: ...


class BatchItemError(LLMError):
    """One item of a batch failed; ``label`` names it (a case id) and ``cause`` says why."""

    def __init__(self, label: str, cause: BaseException):
        self.label = label
        self.cause = cause
        super().__init__(f"LLM call for '{label}' failed: {cause}")


def complete_many(
    client: Completer,
    prompts: Sequence[Prompt],
    *,
    params: Params | dict | None = None,
    use_cache: bool = True,
    concurrency: int = 8,
    progress: Callable[[int], None] | None = None,
    labels: Sequence[str] | None = None,
    totals: CostTotals | None = None,
    repeats: Sequence[int] | None = None,
) -> list[Completion]:
    """One completion per prompt, in order; ``progress(done)`` after each finishes.
    ``repeats`` gives each prompt its repeat index (see ``LLMClient.complete``); 0 for all
    by default."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    labels = list(labels) if labels is not None else [f"item {i}" for i in range(len(prompts))]
    if len(labels) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(labels)} labels")
    repeat_of = list(repeats) if repeats is not None else [0] * len(prompts)
    if len(repeat_of) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(repeat_of)} repeat indexes")
    results: list[Completion | None] = [None] * len(prompts)
    done = 0
    lock = threading.Lock()

    def run(index: int) -> None:
        nonlocal done
        results[index] = client.complete(
            prompts[index],
            params=params,
            use_cache=use_cache,
            totals=totals,
            repeat=repeat_of[index],
        )
        with lock:
            done += 1
            count = done
        if progress is not None:
            progress(count)

    with ThreadPoolExecutor(
        max_workers=min(concurrency, max(1, len(prompts))), thread_name_prefix="llm-batch"
    ) as pool:
        futures = {pool.submit(run, i): i for i in range(len(prompts))}
        finished, pending = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [(futures[f], error) for f in finished if (error := f.exception()) is not None]
        if failed:
            for future in pending:
                future.cancel()
            index, error = min(failed, key=lambda item: item[0])
            raise BatchItemError(labels[index], error) from error
    return [r for r in results if r is not None]
