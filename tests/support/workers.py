"""Worker targets for the activation tests.  This module never imports npu_compat."""

import os
import sys


def probe():
    """Import the target the way an sglang worker does and say what its helpers are."""
    import sglang.srt.managers.overlap_utils as m

    from support import report

    active = sys.modules.get("npu_compat")
    return {
        "pid": os.getpid(),
        "helpers": report.describe(m),
        "states": report.states() if active else None,
        "route": active.route() if active else None,
    }


def to_queue(queue):
    queue.put(probe())


def rank_main(rank, world, port, path):
    import json

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        gathered = [None] * world
        dist.all_gather_object(gathered, probe())
        if rank == 0:
            with open(path, "w") as f:
                json.dump(gathered, f)
    finally:
        dist.destroy_process_group()
