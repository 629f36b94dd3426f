"""Recovery after pruning: fine-tuning with distillation, checkpoints, progressive schedules."""
