"""The defaults of `onnx-serve quantize`, in a module that imports nothing heavy: the command line is built at
every `onnx-serve` start, and onnxruntime.quantization is only imported when a quantization runs."""

METHODS = ("entropy", "minmax", "percentile")
DEFAULT_METHOD = "minmax"  # chosen by measurement: docs/benchmarks.md, "INT8 quantization"
DEFAULT_KEEP_FP32 = ("Softmax",)  # an 8-bit softmax rounds probabilities to 1/255
DEFAULT_SAMPLES = 256
DEFAULT_HOLDOUT_SAMPLES = 1000
DEFAULT_MIN_AGREEMENT = 0.99
DEFAULT_BATCH_SIZES = (1, 8, 32, 64)
