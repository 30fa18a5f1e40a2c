"""lights-out: run GPU RL experiments unattended on a doit task graph."""
