"""TRPO for MuJoCo tasks, configured by Hydra and logged to Weights & Biases."""
