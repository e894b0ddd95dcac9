"""Reporting of a grid's results, outside the method core: records, statistics, tables, plots.

* ``records``: the ``final.json`` schema (written and read), collecting a folder's runs;
* ``aggregate``: mean ± std over seeds, the papers' Average, per-epoch curves;
* ``ttest``: paired t-tests between strategies (method-spec 3, Fig. 4), by ``scipy.stats``;
* ``tables``: the papers' tables as markdown and CSV;
* ``plots``: accuracy vs budget, sparsity per epoch, the t-test heat map;
* ``make``: ``make_report``, all of the above for one results folder;
* ``memory``: a network's per-layer memory, its totals, SU schemes and a budget's share.

``records`` needs only the standard library (the run loop uses it); ``ttest`` and ``make`` need
scipy, the ``report`` extra (``pip install 'trady-jax[report]'``).
"""
