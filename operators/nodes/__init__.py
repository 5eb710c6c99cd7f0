"""Runtime node kinds for the model zoo (adapters between `operators` and `stream`)."""
