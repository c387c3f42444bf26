"""Thread pools shared by the whole process, each started on first use.

A child made by fork has none of its parent's threads: a task handed to a pool it
inherited would wait forever, so a child starts pools of its own.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

_pools: dict[tuple[str, int], ThreadPoolExecutor] = {}
_lock = threading.Lock()


def shared_pool(name: str, threads: int) -> ThreadPoolExecutor:
    """The process's pool of ``threads`` threads named ``name``, started on first use.

    A task run on it must not wait for another task of the same pool: with every
    thread waiting, none would be left to run it.
    """
    with _lock:
        pool = _pools.get((name, threads))
        if pool is None:
            pool = _pools[name, threads] = ThreadPoolExecutor(threads, thread_name_prefix=name)
        return pool


def _forget_pools() -> None:
    global _lock
    _pools.clear()
    _lock = threading.Lock()  # a thread of the parent may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)
