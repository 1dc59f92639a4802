"""What a quantization method is, one module per family: the bits it takes, the backend that
builds it, its recipe and its checks, its scheme, where vLLM cannot serve it, and the library
vLLM needs for it. The manifest, the kernel choice, the hardware check and the fleet ask
``family(method)``; none of them branches on the method.

Adding a method to a family: its module here (and its worker in serving/worker/), and the
``Method`` name in ``base``. A new family: a module here, listed in ``FAMILIES``.
"""

from serving.methods.base import (
    BUILTIN_CALIBRATION,
    NOT_OFFERED,
    RECIPE_FIELDS,
    Backend,
    Family,
    GgufType,
    Method,
)
from serving.methods.bitsandbytes import Bitsandbytes
from serving.methods.compressed import Compressed
from serving.methods.gguf import Gguf
from serving.methods.torchao import Torchao
from serving.methods.unquantized import BaseWeights, Fp8

FAMILIES: tuple[Family, ...] = (
    BaseWeights(), Fp8(), Compressed(), Gguf(), Bitsandbytes(), Torchao()
)  # fmt: skip
_BY_METHOD = {method: f for f in FAMILIES for method in f.methods}


def family(method: Method) -> Family:
    return _BY_METHOD[method]


__all__ = [
    "BUILTIN_CALIBRATION", "FAMILIES", "NOT_OFFERED", "RECIPE_FIELDS", "Backend", "Family",
    "GgufType", "Method", "family",
]  # fmt: skip
