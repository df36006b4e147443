"""Training: GRPO math (`grpo.py`), the policy's log-probs (`policy.py`), the DeepSpeed learner
(`learner.py`: set-up and an update's pieces; `grpo_update.py` and `sft.py`: the updates), batches
and micro-batches, checkpoints, LoRA and the weight-sending side. May import rollout, reward and
families."""
