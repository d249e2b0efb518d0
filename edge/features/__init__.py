"""Pre-processing shared by training and the runtime: one definition of each model input (face crop, log-mel, EEG)."""
