"""jnas: differentiable NAS in the DARTS space, and honest evaluation of it, in JAX/Flax.

The public API. ``import jnas`` appends one XLA:CPU flag to ``XLA_FLAGS`` (before JAX starts its
backend) that makes the depthwise-convolution weight gradients 5-7x faster on CPU; set
``JNAS_KEEP_XLA_FLAGS=1`` to leave ``XLA_FLAGS`` alone. On Linux, start Python with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` for ~30% faster CPU steps (``jnas.cpu_env``; the
``experiments`` and ``benchmarks`` commands do this themselves).
"""

from jnas import cpu_env as _cpu_env

_cpu_env.apply_xla_flags()

from jnas import checkpoint as checkpoint  # noqa: E402
from jnas import data as data  # noqa: E402
from jnas import genotypes as genotypes  # noqa: E402
from jnas import kernels as kernels  # noqa: E402
from jnas import metrics as metrics  # noqa: E402
from jnas import ops as ops  # noqa: E402
from jnas import optim as optim  # noqa: E402
from jnas import protocols as protocols  # noqa: E402
from jnas import search as search  # noqa: E402
from jnas import train as train  # noqa: E402
from jnas import space as space  # noqa: E402
from jnas import cellspace as cellspace  # noqa: E402
from jnas.cellspace import SpaceGenotype as SpaceGenotype  # noqa: E402
from jnas.space_network import SpaceNetwork as SpaceNetwork  # noqa: E402
from jnas.genotype import Genotype as Genotype  # noqa: E402
from jnas.genotype import derive_genotype as derive_genotype  # noqa: E402
from jnas.genotype import parse as parse_genotype  # noqa: E402
from jnas.network import Network as Network  # noqa: E402
from jnas.network import count_params as count_params  # noqa: E402
from jnas.network import drop_path as drop_path  # noqa: E402
from jnas.packed import PackedNetwork as PackedNetwork  # noqa: E402
from jnas.space import PRIMITIVES as PRIMITIVES  # noqa: E402
from jnas.space import random_genotype as random_genotype  # noqa: E402
from jnas.space import random_genotypes as random_genotypes  # noqa: E402
from jnas.supernet import SearchNetwork as SearchNetwork  # noqa: E402
from jnas.supernet import init_alphas as init_alphas  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Genotype", "Network", "PackedNetwork", "PRIMITIVES", "SearchNetwork", "SpaceGenotype", "SpaceNetwork",
    "cellspace", "checkpoint", "count_params", "data",
    "derive_genotype", "drop_path", "genotypes", "init_alphas", "kernels", "metrics", "ops", "optim",
    "parse_genotype", "protocols", "random_genotype", "random_genotypes", "search", "space", "train",
]
