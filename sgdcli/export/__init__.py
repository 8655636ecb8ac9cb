"""Exporting a trained model for other tools: ONNX, PyTorch (safetensors + nn.Sequential), plain NumPy arrays."""
