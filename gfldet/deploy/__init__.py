"""Deployment primitives, below the inference jobs: the metadata that makes an exported ONNX file
self-describing (and the resize it prescribes), the ONNX runtimes behind one call (onnxruntime,
OpenVINO), int8 quantization, detection agreement, and the machine a time was measured on.
`gfldet export / infer / benchmark` (gfldet.inference) build on them; docs/deploy.md."""
