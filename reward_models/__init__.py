"""Rewards computed by a model (a CLAP audio-text model first: `clap.py`), run by their own Ray
actor kind; the tiny CLAP's offline build and contrastive training sit in assets/.
May import rollout and reward."""
