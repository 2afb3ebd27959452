"""Training: the loop (loop), the jitted step and its state (train_step), the losses (objective, autoencoder),
fault handling (faults) and ahead-of-time compilation (aot)."""
