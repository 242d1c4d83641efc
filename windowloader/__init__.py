"""windowloader: sliding-window token batches for GPT-style training, in PyTorch or JAX/Flax.

`import windowloader` pulls in numpy and the standard library only; the frameworks live in
`windowloader.adapters.torch` and `windowloader.adapters.jax`.
"""

from windowloader.cache import TokenizedCorpus, tokenize_corpus
from windowloader.checkpoint import state_from_arrays, state_to_arrays
from windowloader.mixture import Mixture
from windowloader.order import BatchOrder
from windowloader.tokenizer import ByteTokenizer, load_tokenizer
from windowloader.windows import TokenWindows

__all__ = [
    "BatchOrder",
    "ByteTokenizer",
    "Mixture",
    "TokenWindows",
    "TokenizedCorpus",
    "load_tokenizer",
    "state_from_arrays",
    "state_to_arrays",
    "tokenize_corpus",
]
__version__ = "0.1.0"
