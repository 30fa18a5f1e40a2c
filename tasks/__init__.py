"""Experiment families and launchers; dodo.py imports the task creators from here."""
