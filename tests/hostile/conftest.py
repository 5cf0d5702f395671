"""The hostile-script tests start real supervisors with the same fixture as the others."""

from tests.supervisor.conftest import supervisors

__all__ = ["supervisors"]
