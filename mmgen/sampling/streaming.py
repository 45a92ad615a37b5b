"""Turn a callback-driven generation into an iterator of partial results (for streaming UIs).

The generation runs in a worker thread; each callback value is handed to the consumer through
a queue. Closing the iterator early (a user pressed Stop, a client disconnected) sets the
cancel event, which the generation loop checks before every step.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator

_DONE = object()


def stream(run: Callable[[Callable[[Any], None], threading.Event], Any]) -> Iterator[tuple[str, Any]]:
    """``run(emit, cancel)`` does the work, calling ``emit(partial)`` as it goes; returns the final result.

    Yields ``("partial", value)`` for every emit, then ``("final", result)``. Exceptions in the
    worker are re-raised in the consumer.
    """
    items: queue.Queue = queue.Queue()
    cancel = threading.Event()
    outcome: dict[str, Any] = {}

    def worker() -> None:
        try:
            outcome["result"] = run(lambda value: items.put(value), cancel)
        except BaseException as e:  # handed over to the consumer thread
            outcome["error"] = e
        finally:
            items.put(_DONE)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                break
            yield "partial", item
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        yield "final", outcome.get("result")
    finally:
        cancel.set()  # the consumer went away: stop the worker at its next step
