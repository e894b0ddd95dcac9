"""A grid of fine-tuning runs over seeds, archs, datasets, budgets and strategies.

* ``plan``: the runs of a grid and their fixed folders (``expand``);
* ``launch``: running them here or as a SLURM array, their status, the grid's protocol file;
* ``cli``: the command line (``experiments/grid.py``).
"""
