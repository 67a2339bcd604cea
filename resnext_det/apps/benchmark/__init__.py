"""The benchmark: one A/A-controlled protocol for every speed figure (:mod:`.protocol`), the
parts it measures (:mod:`.suites`), the tables rendered from its records (:mod:`.render`) and
the command line (:mod:`.cli`, ``tools/benchmark.py``).

Nothing in ``engine/`` or ``deploy/`` imports this package (it imports them): the training
``auto`` rule reads the JSON table :mod:`.render` writes, not this code.
"""
from .cli import main
from .suites import matmul_ceiling, runtime_gemm_ceiling, runtimes_available

__all__ = ["main", "matmul_ceiling", "runtime_gemm_ceiling", "runtimes_available"]
