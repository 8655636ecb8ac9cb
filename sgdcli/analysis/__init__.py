"""Looking at a model or a run: the finite-difference gradient check, loss landscapes and the optimizer reference."""
