"""fedw2v: federated fine-tuning of wav2vec 2.0 speech recognisers, with speaker-privacy analysis."""

__version__ = "0.1.0"
