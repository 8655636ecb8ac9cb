"""Data sources (CSV, NPZ, IDX images, synthetic sets), label encoding, validation splits and feature scaling."""
