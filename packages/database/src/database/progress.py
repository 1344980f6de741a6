"""How long work tells its progress, whoever shows it.

The domain modules (``database.clean``, ``database.lifecycle.purge``,
``database.verify``, ``database.seed``, ``workers.demo``) take an optional
``progress`` callback and call it as the work advances with ``(done, total, what)``:
counts of the work's own unit (rows removed, checks and users, rows upserted,
demo steps), ``done`` growing up to ``total``, and ``what`` the part in hand (a
table, a check). ``total`` may grow once a later stage is known (verify's repairs),
never below ``done``. The last call of a finished run has ``done == total``.

The work does what counting needs only when a callback is given (``clean`` and
``purge`` count the rows first), so a script or a scheduler that passes none pays
nothing. ``automl-db`` passes one when standard error is a terminal and draws it
with rich (``database.cli``).
"""

from __future__ import annotations

from collections.abc import Callable

#: ``progress(done, total, what)``.
Progress = Callable[[int, int, str], None]

__all__ = ["Progress"]
