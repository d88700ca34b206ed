"""asarm: Any-Subset Autoregressive Models (AS-ARMs) and Any-Subset Speculative Decoding (ASSD).

Guo & Ermon, "Reviving Any-Subset Autoregressive Models with Principled Parallel
Sampling and Speculative Decoding" (arXiv 2504.20456).
"""
from . import startup as _startup  # noqa: F401  (first: a SIGTERM while importing is recorded)

from . import orders
from .decoders import PlainDecoder
from .model import ASARM
from .sampling import NonFiniteLogitsError, SampleOutput, sample
from .tokenizer import XLNET_SPECIAL_TOKENS, build_local_tokenizer, load_tokenizer

__all__ = [
    "ASARM",
    "PlainDecoder",
    "NonFiniteLogitsError",
    "SampleOutput",
    "sample",
    "orders",
    "XLNET_SPECIAL_TOKENS",
    "build_local_tokenizer",
    "load_tokenizer",
]
__version__ = "0.1.0"
