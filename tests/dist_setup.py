"""Start and end of the gloo process group in the torchrun scripts of the suite.

Used by ``monitor_ddp_script.py`` and ``dist_eval_script.py`` (issue 11: rank 1 of
the DDP job once aborted with "terminate called without an active exception").

What was wrong: ``torch.distributed.nn.functional`` binds ``group.WORLD`` as the default
``group`` argument of ten collectives when it is first imported. Imported after
``init_process_group``, that default is the live world group, held for the life of
the process: ``destroy_process_group`` then cannot free it, gloo's threads
(``gloo_tcp_loop`` and two ``pt_gloo_runloop``) keep running through interpreter
shutdown and ``exit()``, and the process tears itself down around them: the reported
source of this very abort (pytorch/pytorch#190489, a gloo group left alive at exit).
The abort did not recur in 60 runs of the old scripts here; the live threads showed
in every run of the old DDP script inspected (gdb: ``ProcessGroupGloo``'s destructor
never ran).
``DistributedDataParallel(...)`` performs that import (through ``torch._dynamo``), so
every DDP script that does not import it first ends with a live group.

So: import it before ``init_process_group`` (its defaults are then ``None``), let go
of every object holding the group (DDP's reducer does) before ``teardown``, and have
the scripts report what is still running after it, for the tests to check.
"""

from __future__ import annotations

import gc
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist
import torch.distributed.nn  # noqa: F401  (before init_process_group: see above)

# Below the tests' subprocess timeouts, so a stuck collective fails with gloo's message.
TIMEOUT = timedelta(seconds=120)


def init() -> None:
    """Join the gloo process group that torchrun describes in the environment."""
    dist.init_process_group("gloo", timeout=TIMEOUT)


def other_threads() -> list[str] | None:
    """Names of the native threads of this process besides the main one (None off Linux)."""
    if sys.platform != "linux":
        return None
    names = []
    for task in Path("/proc/self/task").iterdir():
        if task.name == str(os.getpid()):
            continue  # the main thread
        try:
            names.append((task / "comm").read_text(encoding="utf-8").strip())
        except OSError:  # the thread ended while we looked
            continue
    return sorted(names)


def teardown() -> list[str] | None:
    """Destroy the process group; return the threads still running (expected: none).

    Call it once nothing else holds the group: objects that do (a DDP wrapper) must be
    out of scope, and a collection frees any still caught in a reference cycle.
    """
    gc.collect()
    dist.destroy_process_group()
    return other_threads()
