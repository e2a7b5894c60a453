"""The Lightning callbacks the trainer adds to every run (they import torch and Lightning)."""
