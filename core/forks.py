"""Objects that must reset themselves in a forked child.

A forked child inherits its parent's locks (possibly held by a thread that does not exist in the
child), connections and worker threads. Whatever holds such things registers a reset here: it
runs in the child right after the fork, before the child runs any code of its own (a lock held at
the fork would otherwise deadlock the child's first call).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["reset_after_fork"]

T = TypeVar("T")

#: Live owners and their reset; an owner that is collected drops out.
_resets: weakref.WeakKeyDictionary[Any, Callable[[Any], None]] = weakref.WeakKeyDictionary()


def reset_after_fork(owner: T, reset: Callable[[T], None]) -> None:
    """Call ``reset(owner)`` in every forked child while ``owner`` lives.

    :param reset: a function of the owner (e.g. ``Engine.after_fork``), not a bound method, so
        that the registration does not keep the owner alive.
    """
    _resets[owner] = reset


def _after_fork_in_child() -> None:
    for owner, reset in list(_resets.items()):
        reset(owner)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
