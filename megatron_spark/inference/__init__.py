"""A model behind a rollout engine with the task it is scored on: what training and scoring share."""
