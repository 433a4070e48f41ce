"""Teacher data: (prompt, response) records from an OpenAI-compatible endpoint or a local teacher on our
engine, the target's own answers, and prompts mined from local text or written by the target."""
