"""doit entry point: the task creators live in tasks/."""
