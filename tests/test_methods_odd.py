"""The other half of the method table of ``tests/test_methods.py`` (every other registered method),
in a file of its own so that pytest-xdist runs the two halves at the same time."""

from test_methods import TABLE, digits, make_trained  # noqa: F401  (fixtures)
from test_methods import test_step_metrics_derive_and_learning  # noqa: F401
from test_methods import test_two_seeds_vmapped_equal_each_seed_alone  # noqa: F401

trained = make_trained(TABLE[1::2])
