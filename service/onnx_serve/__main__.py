"""`python -m onnx_serve` runs the `onnx-serve` command."""

import sys

from onnx_serve.cli import main

sys.exit(main())
