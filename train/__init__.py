"""Training: FastCLIP losses and per-sample state, schedules, backends, checkpoints, faults, the loop."""
