"""Federated learning: pure aggregation (`aggregate`), Flower apps and the simulation runner."""
