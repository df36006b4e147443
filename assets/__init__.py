"""Tools the CLI calls to make what the embedded default needs: a tiny Qwen2-Audio, synthetic data
and a format warm start. The service (cluster/) never imports them."""
