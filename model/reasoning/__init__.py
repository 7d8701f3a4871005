"""v1.2 reasoning: the thinker and reflection prompts and answer parsing."""
