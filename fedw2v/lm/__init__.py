"""N-gram language models for beam decoding: estimation (`ngram`), lexicons (`lexicon`), and the
`fedw2v lm build` stage (`build`)."""
