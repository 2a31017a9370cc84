"""Speaker privacy of exchanged models: footprints and the EER of the attack that uses them (../shared/REFERENCE.md
§4).

The method (Tomashenko et al., ICASSP 2022; applied to federated wav2vec2 by the ICASSP 2023 study):

- **Indicator set** (`privacy.indicator`): a fixed list of utterances of speakers who are not among the analysed
  clients (default: the corpus dev split). Every model is run on the same set, so the analyst needs no client
  speech.
- **Footprint** (`privacy.footprints`) of a model m against the global model g the clients started from: for
  every indicator frame t and layer l, Δ_l(t) = h_l^m(t) − h_l^g(t); over all valid frames of all indicator
  utterances, the per-dimension mean and standard deviation of Δ_l, concatenated: one vector of 2 × hidden floats
  per layer. Layers: the encoder input (feature projection + convolutional positional embedding, i.e. the input of
  the first transformer block, ``hidden_states[0]``) and the output of every transformer block.
- **Trials**, per round r (`privacy.attack`): for each sampled client that succeeded and has a holdout, the
  *test* model is its uploaded update and the *enrollment* model is global_r (checkpoint ``round-(r-1)``)
  fine-tuned on its holdout with the run's local recipe. Score = cosine similarity of an enrollment and a test
  footprint, per layer; target trials pair one client's two models, non-target trials models of different
  clients. EER (%) per layer, per round and pooled over rounds (`privacy.stats`: each round's scores standardised
  by its non-target scores first, a monotone change that leaves the round's EER as it is and puts rounds on one
  scale), with a bootstrap confidence interval. A round with fewer than 2 target trials is not measurable. A low
  EER means identity leaks.

Where the stages run: the federated server computes test footprints as updates arrive (`privacy.online`, the
only module `fl` calls; nothing here imports `fl`); `fedw2v footprint` runs `privacy.attack.analyse` on the run
directory afterwards. Footprints and saved updates are stored by `privacy.store`::

    footprints/round-NNNN/test.safetensors     {"client-<id>": (layers, 2*hidden) float32}, meta in the header
    footprints/round-NNNN/test.json            the same meta, readable
    footprints/round-NNNN/enroll.safetensors   enrollment footprints (written by `analyse`, reused by reruns)
    updates/round-NNNN/client-<id>.safetensors a client's full uploaded weights (``simulate --save-updates``)

A footprint is layers × 2 × hidden float32: 25 × 2 × 1024 × 4 B = 200 KiB for wav2vec2-large.
"""
