"""Smaller and faster bundles: ONNX export, int8 quantization, distillation and pruning."""
