"""The benchmark a user runs on their own CPU against stock detectron2: one A/A-controlled
protocol for every speed figure and the one record writer (:mod:`.protocol`), the parts it
measures (:mod:`.suites`) and the command line (:mod:`.cli`, ``tools/benchmark.py``).

Nothing in ``engine/`` or ``deploy/`` imports this package: the training ``auto`` rule reads a
JSON table rendered from the records (``benchmarks/render.py``), not this code.
"""
from .cli import main
from .suites import matmul_ceiling, runtime_gemm_ceiling, runtimes_available

__all__ = ["main", "matmul_ceiling", "runtime_gemm_ceiling", "runtimes_available"]
