"""The application: build a job from a config, train and record it, checkpoints, resume,
stopping."""
