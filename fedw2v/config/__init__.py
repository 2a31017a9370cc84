"""Typed configuration objects, built once: local training (`config.train`) and federated runs
(`config.simulate`)."""
