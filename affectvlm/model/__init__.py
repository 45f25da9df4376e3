"""The AffectVLM model: open_clip towers, view and frame fusion, and the prompt bank."""
