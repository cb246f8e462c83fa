"""Stage 2: distil a fine-tuned teacher into an MPC-friendly student (``python -m distill.run``)."""
