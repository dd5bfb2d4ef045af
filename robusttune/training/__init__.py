"""Training: the fine-tuning loop, evaluation, checkpoints, WiSE-FT curves and the mini world's pre-training."""
