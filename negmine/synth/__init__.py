"""Synthetic clustered retrieval corpora.

:func:`make_corpus` draws a corpus shaped like the embeddings of a real
question-answering collection after k-means: a few broad topics on the unit
sphere, clusters laid out inside each topic so that neighbouring clusters
overlap, heavy-tailed cluster sizes, sources spread along a low-dimensional
per-topic subspace plus isotropic noise, and questions that are noisy copies
of their positive source; ``spectrum="minilm"`` shapes the covariance
spectrum like that of real sentence embeddings. :func:`top_hits_share`
measures how often the exact nearest sources of a question fall inside the
question's own cluster.

Everything is float32 and generated in row chunks, with no [S, C] matrix, so
a corpus of a million 384-wide sources costs little more than its own arrays.
Only numpy is needed.
"""

from .corpus import make_corpus
from .pairs import top_hits_share
from .params import _cluster_sizes  # noqa: F401  (tests draw sizes directly)

__all__ = ["make_corpus", "top_hits_share"]
