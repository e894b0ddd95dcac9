"""Names the run loop (``trady_jax.train``) still imports from here; their homes are
``trady_jax.atomic`` (atomic writes) and ``trady_jax.report.records`` (run records)."""

from trady_jax.atomic import write_json_atomic, write_text_atomic  # noqa: F401
from trady_jax.report.records import DIVERGED  # noqa: F401
