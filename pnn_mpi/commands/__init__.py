"""The commands users type: the CLI and its subcommands (run, evaluate, predict, download, bench,
plot), ``pnn-mpi launch``, and the optional comparison and figure scripts (torch_compare,
readme_figures, timeline_overhead).
"""
