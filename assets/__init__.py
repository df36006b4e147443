"""Tools the CLI calls to make what the embedded default needs: the tiny model builders (one per
family, their shared parts, the family dispatch in `tiny_model.py`), synthetic data and the format
warm start; the service never imports them. May import learner, rollout,
reward_models, reward and families."""
