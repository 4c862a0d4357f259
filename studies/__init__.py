"""Research studies run with the trainer (the small-batch study); their results live in studies/results/."""
