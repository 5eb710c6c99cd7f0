"""Runtime node kinds for the model zoo (adapters between `operators` and `stream`)."""
import operators.nodes.video  # noqa: E402,F401  (registers cox3d)
import operators.nodes.skeleton  # noqa: E402,F401  (registers costgcn, oadtr)
import operators.nodes.ppn  # noqa: E402,F401  (registers ppn)
import operators.nodes.netmamba  # noqa: E402,F401  (registers netmamba)
