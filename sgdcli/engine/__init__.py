"""Pure NumPy, no I/O: layers (dense, conv, pooling, batch norm), activations, initialisers, losses,
optimizers, schedules, the model, objectives, derivative-free search and the evaluation metrics
(accuracy, F1, confusion matrix, R²)."""
