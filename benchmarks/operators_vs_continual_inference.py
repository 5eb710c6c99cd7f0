"""Per-step latency of the continual operators against continual-inference 1.2.4 with the same weights.

Same cases and method as operators_vs_offline.py (CPU, 2 threads, batch 1 and 8, interleaved timing);
the goal is >= 5x faster per step on (a) the Conv3d stack and (b) the Transformer encoders at batch 1.
Cases the reference library cannot build (Mamba) show "-".

    python benchmarks/operators_vs_continual_inference.py [--quick] [--json OUT]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from operators_vs_offline import main  # noqa: E402

if __name__ == "__main__":
    main(baseline="reference")
