"""The run directory on disk: its layout, metrics file, summary, lock and safetensors checkpoints."""
