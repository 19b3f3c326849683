"""Spreading benchmark/tuning work: in-process, one process per visible GPU, or a Ray cluster."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def split(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """Round-robin ``items`` into at most ``parts`` non-empty chunks."""
    parts = max(1, min(parts, len(items)))
    return [list(items[i::parts]) for i in range(parts)]


def run(task: Callable[[dict[str, Any]], list[Any]], payload: dict[str, Any], items: Sequence[Any],
        workers: int, use_ray: bool, item_key: str = "batch_sizes") -> list[Any]:
    """Run ``task({**payload, item_key: chunk, "device": ...})`` over chunks of ``items``.

    ``use_ray``: one Ray task per chunk (``num_gpus=1`` each on CUDA) on the cluster named by
    ``RAY_ADDRESS``, or a local Ray instance. ``workers > 1``: one process per visible GPU.
    """
    device = payload.get("device", "cpu")
    if use_ray:
        import ray

        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True, log_to_driver=False)
        gpus = 1 if device.startswith("cuda") else 0
        remote = ray.remote(num_gpus=gpus)(task)
        chunks = split(items, workers if workers > 1 else len(items))
        refs = [remote.remote({**payload, item_key: c, "device": "cuda" if gpus else device}) for c in chunks]
        return [r for chunk in ray.get(refs) for r in chunk]
    if workers <= 1:
        return task({**payload, item_key: list(items)})
    chunks = split(items, workers)
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(chunks), mp_context=ctx) as pool:
        futures = [pool.submit(task, {**payload, item_key: c, "device": f"cuda:{i}" if device.startswith("cuda") else device})
                   for i, c in enumerate(chunks)]
        return [r for f in futures for r in f.result()]
