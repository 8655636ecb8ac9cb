"""sgdcli: train neural networks with gradient descent from YAML configs."""

__version__ = "0.1.0"
