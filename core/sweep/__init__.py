"""Epoch × strength sweep: checkpoints × strengths × seeds × prompts → scored, labelled images."""
