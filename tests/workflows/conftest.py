"""The workflow tests start real supervisors with the same fixture as the others, on both
stores (``database``)."""

from tests.supervisor.conftest import supervisors
from tests.workflows.common import database

__all__ = ["database", "supervisors"]
