"""Training loop for GPT and NextLat models (see ``trainer.train``)."""
