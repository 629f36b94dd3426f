"""Intake: models read without running untrusted code, the zoo, datasets, and the job's data in its two roles."""
