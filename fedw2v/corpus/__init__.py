"""Corpus recipes: TED-LIUM 3 preparation (`tedlium`) and the synthetic demo corpus (`synth`)."""
