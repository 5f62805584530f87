"""The ONNX backend: graphs run with onnxruntime."""
