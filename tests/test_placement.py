from __future__ import annotations

import pytest

from serving.errors import PlacementError
from serving.hardware import Gpu, Hardware
from serving.placement import Placement

TWO = Hardware("cuda", gpus=(Gpu(0, "H200", 90, 143_000), Gpu(1, "H200", 90, 143_000)))


def test_small_variants_pack_onto_one_gpu_by_memory() -> None:
    p = Placement(TWO)
    assert p.place("a#0", 1, 0.3) == (0,)
    assert p.place("b#0", 1, 0.3) == (0,)  # best fit: the fuller GPU still has room
    assert p.place("c#0", 1, 0.5) == (1,)  # GPU 0 has 0.35 left
    assert p.place("d#0", 1, 0.3) == (0,)


def test_tensor_parallel_takes_whole_gpus_and_release_frees_them() -> None:
    p = Placement(TWO)
    assert p.place("big#0", 2, 0.9) == (0, 1)
    with pytest.raises(PlacementError, match=r"free now: GPU 0: 0\.05, GPU 1: 0\.05"):
        p.place("small#0", 1, 0.3)
    p.release("big#0")
    assert p.place("small#0", 1, 0.3) == (0,)


def test_impossible_requests() -> None:
    with pytest.raises(PlacementError, match="needs 4 GPUs; this machine has 2"):
        Placement(TWO).place("x#0", 4, 0.5)
    with pytest.raises(PlacementError, match="needs GPUs; this machine has none"):
        Placement(Hardware("cpu")).place("x#0", 2, 0.5)
    assert Placement(Hardware("cpu")).place("x#0", 1, 0.5) == ()
