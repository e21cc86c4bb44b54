"""gfldet.core.dist: torchrun with one process still takes the distributed path."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")


def test_torchrun_with_one_process_joins_a_process_group(monkeypatch):
    """`torchrun --nproc_per_node=1` sets WORLD_SIZE=1: the run must still take the
    distributed path (process group, DDP), which is what a single-GPU torchrun check exercises."""
    import socket

    import torch.distributed as dist

    from gfldet.core import dist as gdist

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert not gdist.is_distributed()
    gdist.init_distributed(torch.device("cpu"))
    try:
        assert gdist.is_distributed() and gdist.world_size() == 1 and gdist.rank() == 0
        assert gdist.reduce_sum([1.0, 2.0], torch.device("cpu")) == [1.0, 2.0]
        # The last collective's work, tensors included, outlives the call: a gloo worker
        # thread that released them last would need the GIL, and if the interpreter is exiting
        # then, the process aborts (SIGABRT, "terminate called without an active exception";
        # 2 of 29 two-process torchrun trainings before the handle was kept).
        (work,) = gdist._last_work
        assert work.is_completed() and work.result()[0].tolist() == [1.0, 2.0]
        assert gdist.reduce_mean(torch.tensor([4.0])).item() == 4.0
        assert gdist._last_work[0] is not work and gdist._last_work[0].result()[0].item() == 4.0
        gdist.shutdown()  # a barrier, then the group is left
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert not gdist.is_distributed()
