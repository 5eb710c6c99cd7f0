"""Built-in node kinds of the runtime (pass-through, synthetic sources, generic sinks)."""
