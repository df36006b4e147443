"""The `audio-grpo` command line: above cluster/, deploy/ and assets/, it wires them together."""
