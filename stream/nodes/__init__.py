"""Built-in node kinds of the runtime (pass-through, synthetic sources, generic sinks).

Importing this package registers: `passthrough` (operator), `synthetic` (source), `null` and `log`
(sinks).
"""
from stream.nodes.passthrough import Passthrough
from stream.nodes.sinks import LogSink, NullSink
from stream.nodes.synthetic import Synthetic

__all__ = ["LogSink", "NullSink", "Passthrough", "Synthetic"]
