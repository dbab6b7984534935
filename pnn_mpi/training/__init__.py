"""One training run: its configuration and flags, the defaults rule, the loop (train), the data a
rank loads, checkpoints, the model file, the run folder, health warnings, progress lines, memory checks,
and training on through a lost rank (survive).
"""
