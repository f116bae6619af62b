"""Training on PyTorch Lightning (imported only by ``dsen2cr train``; inference does not need it)."""
