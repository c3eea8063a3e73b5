"""Tasks: what a question is and how an answer is read (definitions, the catalogue, answer formats, readability)."""
