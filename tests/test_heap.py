"""The worker freezes its long-lived heap (gateway/service/worker.py: settle_heap).

Why it matters: a full collection on the message path walked the whole start-up heap,
30-50 ms each time (a p99 latency spike). These check what the freeze must give: a full
collection afterwards no longer walks what was built before, and a reload (which settles
again) still frees the engine it replaced.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

from gateway.keys import Keyring
from gateway.pipeline import Engine
from gateway.policy.load import load
from gateway.service.worker import settle_heap


def _engine() -> Engine:
    return Engine([load(Path(__file__).parent.parent / "rules" / "jimi-tracksolid.toml")], Keyring.test())


def test_a_full_collection_after_settling_skips_the_heap_built_before() -> None:
    engine = _engine()
    try:
        settle_heap()
        assert gc.is_tracked(engine) and not any(o is engine for o in gc.get_objects())
        walked = len(gc.get_objects())
        assert walked < gc.get_freeze_count() // 10, (walked, gc.get_freeze_count())
    finally:
        gc.unfreeze()


def test_settling_again_frees_the_engine_a_reload_replaced() -> None:
    class Holder:  # a cycle, as compiled plans and their closures make: only the collector frees it
        pass

    try:
        old = Holder()
        old.engine, old.self = _engine(), old
        gone = weakref.ref(old)
        settle_heap()  # start: the old engine is frozen with everything else
        del old
        gc.collect()
        assert gone() is not None  # frozen: not collected, as intended for what lives for ever
        settle_heap()  # the reload
        assert gone() is None
    finally:
        gc.unfreeze()
