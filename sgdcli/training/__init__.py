"""Config objects to runtime objects (build), the training loop, a run being trained (session), objective descent, sweeps and a trained model for inference."""
