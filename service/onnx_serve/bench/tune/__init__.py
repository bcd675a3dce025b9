"""`onnx-serve tune`: searches a model's serving configuration (instances, threads, batching, workers) against a
live or launched server with the bench tool, like Triton's Model Analyzer (space, search, targets, report, cli)."""
