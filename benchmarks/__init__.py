"""Benchmarks as commands: ``python -m benchmarks.<name> --help``; results in ``benchmarks/results``.

Launched with ``python -m``, the process re-executes itself once with huge-page ``malloc``
(``jnas/cpu_env.py``; ``JNAS_NO_HUGEPAGES=1`` opts out), except the PyTorch reference, which runs
as PyTorch users run it (huge pages made its supernet step slower: 14.0 s against 10.2 s). The
module is loaded from its file so that this happens before JAX is imported.
"""

import importlib.util as _util
import pathlib as _pathlib

_spec = _util.spec_from_file_location("_jnas_cpu_env", _pathlib.Path(__file__).parents[1] / "jnas" / "cpu_env.py")
_cpu_env = _util.module_from_spec(_spec)
_spec.loader.exec_module(_cpu_env)
_cpu_env.reexec_with_hugepages(skip=("benchmarks.pytorch_reference",))
