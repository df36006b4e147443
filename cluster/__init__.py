"""The service on Ray: the run's config and presets, the memory plan, the GRPO and SFT drivers,
actor groups with their deadlines and recovery, placement, evaluation, metrics and reports; it
never imports deploy/ or the command line. May import learner, rollout, reward_models, reward and
families."""
