"""Corpus recipes: TED-LIUM 3 preparation (`tedlium`) and the synthetic demo corpus (`synth`, with its voices in
`voices` and its sentences in `sentences`)."""
