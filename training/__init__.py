"""Training and export tools for onnx-serve's bundled models (needs the ``train`` extra: torch).

The server itself never imports this package.
"""
