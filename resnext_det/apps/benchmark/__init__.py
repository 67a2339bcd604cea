"""The benchmark a user runs on their own CPU against stock detectron2: the A/A-controlled protocol
and the one record writer (:mod:`.protocol`), its parts (:mod:`.suites`), the command line (:mod:`.cli`).
Nothing in ``engine/`` or ``deploy/`` imports it: they read the JSON tables rendered from the records.
"""
from .cli import main
from .suites import matmul_ceiling, runtime_gemm_ceiling, runtimes_available

__all__ = ["main", "matmul_ceiling", "runtime_gemm_ceiling", "runtimes_available"]
