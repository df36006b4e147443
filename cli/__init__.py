"""The `audio-grpo` command line, on top of everything: it wires the service, serving and the
asset builders together. May import every other folder: cluster, deploy, assets, learner, rollout,
reward_models, reward and families."""
