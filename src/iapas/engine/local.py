"""The local executor: one thread decodes images ahead of the models, the calling thread runs
stage 2 in batches, one writer thread writes each image's files and appends its record, in
order, while the models work on the next batch."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


from iapas.engine.base import ItemError, Job, Sink, WorkItem, model_failure
from iapas.core.images import ImageReadError, LoadedImage, read_image
from iapas.core.types import SegmentationResult


def _ahead(things: Sequence[Any], load: Callable[[Any], Any], ahead: int) -> Iterator[tuple[Any, Any]]:
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="iapas-read") as pool:
        queue: list[tuple[Any, Future[Any]]] = []
        it = iter(things)
        for p in it:
            queue.append((p, pool.submit(load, p)))
            if len(queue) > ahead:
                break
        while queue:
            p, fut = queue.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                queue.append((nxt, pool.submit(load, nxt)))
            yield p, fut.result()


def decode(item: WorkItem, job: Job, max_pixels: int) -> tuple[LoadedImage, Any] | str:
    """The item's image and ``job.prepare``'s data, or the message of why it cannot run."""
    try:
        image = read_image(item.path, max_pixels=max_pixels)
        return image, job.prepare(item, image)
    except (ImageReadError, ItemError) as exc:
        return str(exc)


class LocalExecutor:
    """Prefetch thread, model on the calling thread, one writer thread."""

    def run(self, items: Sequence[WorkItem], pipeline: Any, job: Job, sink: Sink, *, batch_size: int, max_pixels: int) -> None:
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="iapas-write")
        queued: list[Future[None]] = []

        def submit(fn: Callable[[], None]) -> None:
            queued.append(writer.submit(fn))
            while len(queued) > 2 * batch_size + 2:  # bound the memory held by queued results
                queued.pop(0).result()

        def write(item: WorkItem, image: LoadedImage, result: SegmentationResult, prepared: Any) -> None:
            if sink.stopped:  # the disk is full: leave it for the resumed run
                return
            try:
                record = job.write(item, image, result, prepared)
            except OSError as exc:
                sink.write_failed(item, exc)
                return
            sink.ok(item, record, result.image_score)

        batch: list[tuple[WorkItem, LoadedImage, Any]] = []

        def flush() -> None:
            if not batch:
                return
            chunk = list(batch)
            batch.clear()
            try:
                results = pipeline.run([image.rgb for _, image, _ in chunk], job.profile)
            except (RuntimeError, ValueError) as exc:  # e.g. out of memory: fail these, go on with the rest
                for item, _, _ in chunk:
                    submit(lambda item=item, exc=exc: sink.failed(item, model_failure(item, exc)))
                return
            for (item, image, prepared), result in zip(chunk, results):
                # the writer needs the map, the boxes and the masks as RLE, not the masks (N x H x W): free them now
                result = result.without_masks()
                submit(lambda item=item, image=image, result=result, prepared=prepared: write(item, image, result, prepared))

        try:
            for item, loaded in _ahead(items, lambda it: decode(it, job, max_pixels), ahead=max(2, 2 * batch_size)):
                if sink.stopped:
                    break
                if isinstance(loaded, str):
                    submit(lambda item=item, message=loaded: sink.failed(item, message))
                    continue
                batch.append((item, *loaded))
                if len(batch) >= batch_size:
                    flush()
            if not sink.stopped:
                flush()
        finally:  # finished images are written out even when interrupted
            writer.shutdown(wait=True)
            for fut in queued:
                fut.result()
