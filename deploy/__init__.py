"""Serving the policy: the HTTP service and its OpenAI-compatible routes, the live endpoint inside
a training job, checkpoint loading through the weight transfer, and the job recipes (Dockerfile,
KubeRay, Ray runtime env). May import cluster, learner, rollout, reward_models, reward and families."""
